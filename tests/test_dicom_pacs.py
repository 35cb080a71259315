"""Against a real PACS: Debian's Orthanc with its DICOMweb plugin on loopback ports, with authentication and only
registered AE titles allowed to store. dcmtk's storescu sends films to the DICOM node, which sends the SR and overlay
to Orthanc; the DICOMweb client finds, fetches and predicts the same films and stores its results back. Both give
predict.py's probabilities for the same files (1e-4)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import requests
from dicom_network import (
    REPO,
    referenced_film,
    sr_probabilities,
    start_node_process,
    wait_until,
    write_films,
)
from inference_helpers import load_script

from cxr_vit.constants import LABELS
from cxr_vit.dicom.sending import dicomweb_client

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
USER, PASSWORD = "cxr", "not-a-secret"
SC_IMAGE = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture Image Storage: the overlay

pytestmark = [
    pytest.mark.no_hf_floor,
    pytest.mark.skipif(
        not (Path(ORTHANC).is_file() and DICOMWEB_PLUGIN.is_file() and shutil.which("storescu")),
        reason="needs Debian's orthanc, orthanc-dicomweb and dcmtk (apt-get install orthanc orthanc-dicomweb dcmtk)",
    ),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    """Orthanc on free loopback ports; stores only from the registered AE titles STORESCU and CXR_VIT."""
    folder = tmp_path_factory.mktemp("orthanc")
    http_port, dicom_port = free_ports(2)
    config = {
        "Name": "cxr-vit-test",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "storage"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": "ORTHANC",
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {USER: PASSWORD},
        "DicomAlwaysAllowStore": False,
        "DicomModalities": {"storescu": ["STORESCU", "127.0.0.1", 104], "node": ["CXR_VIT", "127.0.0.1", 11112]},
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    (folder / "config.json").write_text(json.dumps(config))
    with (folder / "orthanc.log").open("wb") as log:  # the child keeps its own copy
        process = subprocess.Popen([ORTHANC, str(folder / "config.json")], stdout=log, stderr=log)
    url = f"http://127.0.0.1:{http_port}"
    try:
        wait_until(lambda: _answers(url), 60, "Orthanc to answer")
        yield {"url": url, "dicomweb": f"{url}/dicom-web", "dicom_port": dicom_port}
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)


def _answers(url: str) -> bool:
    try:
        return requests.get(f"{url}/system", auth=(USER, PASSWORD), timeout=2).ok
    except requests.ConnectionError:
        return False


def storescu(port: int, called: str, films: list[Path]) -> None:
    subprocess.run(
        ["storescu", "-aet", "STORESCU", "-aec", called, "127.0.0.1", str(port), *map(str, films)],
        check=True,
        timeout=60,
        capture_output=True,
    )


def stored_reports(client, films: list[Path]) -> list[pydicom.Dataset]:
    """Orthanc's SRs of these films' studies, fetched over WADO-RS."""
    studies = {pydicom.dcmread(path).StudyInstanceUID for path in films}
    reports = []
    for study in studies:
        for item in client.search_for_instances(study_instance_uid=study, search_filters={"Modality": "SR"}):
            series, instance = item["0020000E"]["Value"][0], item["00080018"]["Value"][0]
            reports.append(client.retrieve_instance(study, series, instance))
    return reports


def count_overlays(client, films: list[Path]) -> int:
    studies = {pydicom.dcmread(path).StudyInstanceUID for path in films}
    return sum(
        item["00080016"]["Value"][0] == SC_IMAGE
        for study in studies
        for item in client.search_for_instances(study_instance_uid=study, fields=["00080016"])
    )


@pytest.fixture(scope="module")
def films(tmp_path_factory) -> list[Path]:
    return write_films(tmp_path_factory.mktemp("pacs") / "films", 3, studies=2)


@pytest.fixture(scope="module")
def expected(model_dir, films, tmp_path_factory) -> dict[str, np.ndarray]:
    """predict.py's CSV for the film files: SOP Instance UID -> the 15 probabilities."""
    csv = tmp_path_factory.mktemp("predict") / "predictions.csv"
    predict = load_script(REPO / "scripts" / "predict.py")
    assert predict.main(["--model", str(model_dir), "--device", "cpu", *map(str, films), "--output", str(csv)]) == 0
    frame = pd.read_csv(csv)
    return {pydicom.dcmread(path).SOPInstanceUID: row[list(LABELS)].to_numpy(float) for path, (_, row) in
            zip(frame["path"].map(Path), frame.iterrows(), strict=True)}  # fmt: skip


def test_storescu_to_the_node_puts_sr_and_overlay_in_orthanc(orthanc, model_dir, films, expected, tmp_path):
    arguments = [
        "--model", str(model_dir), "--port", "0", "--ae_title", "CXR_VIT", "--allowed_ae", "STORESCU",
        "--destination", f"127.0.0.1:{orthanc['dicom_port']}:ORTHANC", "--output_dir", str(tmp_path / "queue"),
        "--device", "cpu", "--batch_wait", "0.2",
    ]  # fmt: skip
    process, port = start_node_process(arguments, tmp_path / "node.log")
    client = dicomweb_client(orthanc["dicomweb"], USER, PASSWORD)
    try:
        storescu(port, "CXR_VIT", films)
        wait_until(lambda: len(stored_reports(client, films)) == len(films), 120, "Orthanc to hold the SRs")
    finally:
        process.terminate()
        assert process.wait(timeout=60) == 0
    for sr in stored_reports(client, films):
        probabilities = sr_probabilities(sr)
        np.testing.assert_allclose([probabilities[label] for label in LABELS], expected[referenced_film(sr)], atol=1e-4)
    # the model's thresholds make Effusion the one positive finding of every film: one overlay each
    assert count_overlays(client, films) == len(films)


def test_dicomweb_client_predicts_orthancs_films_and_stores_results(orthanc, model_dir, films, expected, tmp_path):
    storescu(orthanc["dicom_port"], "ORTHANC", films)  # the films are in the PACS
    model = shutil.copytree(model_dir, tmp_path / "web-model")  # another name: results of their own
    client = dicomweb_client(orthanc["dicomweb"], USER, PASSWORD)
    before = {sr.SOPInstanceUID for sr in stored_reports(client, films)}
    script = load_script(REPO / "scripts" / "dicomweb_predict.py")
    csv = tmp_path / "dicomweb.csv"
    arguments = ["--url", orthanc["dicomweb"], "--user", USER, "--password", PASSWORD, "--model", str(model),
                 "--device", "cpu", "--output", str(csv)]  # fmt: skip
    assert script.main([*arguments, "--query", "ModalitiesInStudy=DX"]) == 0
    frame = pd.read_csv(csv)
    assert len(frame) == len(films)
    for _, row in frame.iterrows():
        film = row["path"].rsplit("/", 1)[1]  # studies/<uid>/series/<uid>/instances/<uid>
        np.testing.assert_allclose(row[list(LABELS)].to_numpy(float), expected[film], atol=1e-4)
    new = [sr for sr in stored_reports(client, films) if sr.SOPInstanceUID not in before]
    assert sorted(referenced_film(sr) for sr in new) == sorted(expected)
    for sr in new:
        probabilities = sr_probabilities(sr)
        np.testing.assert_allclose([probabilities[label] for label in LABELS], expected[referenced_film(sr)], atol=1e-4)
    # resumed: every film is in the CSV already; nothing is fetched, predicted or stored again
    studies = sorted({pydicom.dcmread(path).StudyInstanceUID for path in films})
    assert script.main([*arguments, "--study", *studies, "--resume"]) == 0
    assert len(pd.read_csv(csv)) == len(films)
    assert len(stored_reports(client, films)) == len(before) + len(films)


def test_the_node_sends_its_results_by_stow_rs(orthanc, model_dir, films, expected, tmp_path):
    model = shutil.copytree(model_dir, tmp_path / "stow-model")  # another name: results of their own
    client = dicomweb_client(orthanc["dicomweb"], USER, PASSWORD)
    before = {sr.SOPInstanceUID for sr in stored_reports(client, films)}
    overlays_before = count_overlays(client, films)
    arguments = [
        "--model", str(model), "--port", "0", "--ae_title", "CXR_VIT", "--allowed_ae", "STORESCU",
        "--dicomweb", orthanc["dicomweb"], "--dicomweb_user", USER, "--dicomweb_password", PASSWORD,
        "--output_dir", str(tmp_path / "queue"), "--device", "cpu", "--batch_wait", "0.2",
    ]  # fmt: skip
    process, port = start_node_process(arguments, tmp_path / "node.log")

    def new_reports() -> list[pydicom.Dataset]:
        return [sr for sr in stored_reports(client, films) if sr.SOPInstanceUID not in before]

    try:
        storescu(port, "CXR_VIT", films)
        wait_until(lambda: len(new_reports()) == len(films), 120, "Orthanc to hold the SRs sent by STOW-RS")
    finally:
        process.terminate()
        assert process.wait(timeout=60) == 0
    for sr in new_reports():
        probabilities = sr_probabilities(sr)
        np.testing.assert_allclose([probabilities[label] for label in LABELS], expected[referenced_film(sr)], atol=1e-4)
    assert count_overlays(client, films) == overlays_before + len(films)
