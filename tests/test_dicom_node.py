"""The DICOM node (scripts/dicom_node.py, cxr_vit.dicom.node) against a real storage peer on loopback: results for
every acknowledged film, exactly once, through malformed films, aborted associations, concurrent senders, a kill,
and a destination that is down. Films are real NIH films at 64 px; the model is the tiny one of conftest."""

from __future__ import annotations

import logging
import signal
import threading

import numpy as np
import pydicom
import pytest
from dicom_network import (
    PATIENT_NAME,
    Recorder,
    referenced_film,
    send,
    sr_probabilities,
    start_node_process,
    wait_until,
    write_films,
)
from inference_helpers import save_tiny_model
from pydicom import uid
from pynetdicom import AE

from cxr_vit.constants import LABELS
from cxr_vit.dicom.films import algorithm_info
from cxr_vit.dicom.node import DicomNode
from cxr_vit.dicom.sending import CStoreDestination
from cxr_vit.prediction import Predictor, read_image

pytestmark = [pytest.mark.no_hf_floor, pytest.mark.filterwarnings("ignore::UserWarning")]


@pytest.fixture
def recorder():
    peer = Recorder().start()
    yield peer
    peer.stop()


@pytest.fixture(scope="module")
def algorithm(model_dir, predictor):
    return algorithm_info(predictor, model_dir)


@pytest.fixture(scope="module")
def sr_only_model(tmp_path_factory):
    """The tiny model with thresholds no probability reaches: an SR per film and no overlay (the fast case)."""
    return save_tiny_model(tmp_path_factory.mktemp("model") / "sr-only", {label: 1.0 + 1e-6 for label in LABELS})


@pytest.fixture(scope="module")
def sr_only(sr_only_model):
    predictor = Predictor.from_pretrained(sr_only_model, device="cpu")
    return predictor, algorithm_info(predictor, sr_only_model)


def start_node(model: tuple, tmp_path, destination: str, **options) -> DicomNode:
    """The node in this process with ``model`` = (predictor, algorithm), allowing MODALITY and SENDER0-3."""
    options = {"batch_wait": 0.2, "retry_interval": 0.3, **options}
    return DicomNode(
        *model,
        tmp_path / "queue",
        CStoreDestination.parse(destination),
        "CXR_VIT",
        ["MODALITY", "SENDER0", "SENDER1", "SENDER2", "SENDER3"],
        **options,
    ).start()


def test_node_sends_an_sr_and_overlay_per_film_and_logs_no_names(predictor, algorithm, recorder, tmp_path, caplog):
    films = write_films(tmp_path / "films", 3)
    caplog.set_level(logging.DEBUG)
    with start_node((predictor, algorithm), tmp_path, recorder.destination) as node:
        assert send(node.port, films) == [0x0000] * 3
        wait_until(lambda: len(recorder.reports()) == 3, 60, "3 SRs")
        wait_until(lambda: len(recorder.overlays()) == 3, 10, "3 overlays")
    expected = predictor.predict([read_image(path) for path in films])
    by_film = {referenced_film(sr): sr_probabilities(sr) for sr in recorder.reports()}
    for path, prediction in zip(films, expected, strict=True):
        probabilities = by_film[pydicom.dcmread(path).SOPInstanceUID]
        np.testing.assert_allclose([probabilities[label] for label in LABELS], prediction.probabilities, atol=1e-4)
    # the fixture's thresholds make Effusion the only positive finding: one overlay per film, in the film's study
    studies = {pydicom.dcmread(path).StudyInstanceUID for path in films}
    assert {overlay.StudyInstanceUID for overlay in recorder.overlays()} == studies
    assert "received film" in caplog.text and "sent the results" in caplog.text
    assert "SECRETSURNAME" not in caplog.text and "PID-4711" not in caplog.text
    assert PATIENT_NAME in str(recorder.reports()[0].PatientName)  # the results themselves do carry the patient


def test_malformed_films_fail_other_objects_are_ignored_strangers_are_refused(sr_only, recorder, tmp_path):
    good, truncated = write_films(tmp_path / "films", 2)
    no_pixels = pydicom.dcmread(truncated)
    del no_pixels.PixelData
    short = pydicom.dcmread(truncated)
    short.PixelData = short.PixelData[:100]
    other = pydicom.dcmread(good)  # a CT image: acknowledged, not predicted
    other.SOPClassUID = uid.CTImageStorage
    other.SOPInstanceUID = uid.generate_uid()
    with start_node(sr_only, tmp_path, recorder.destination) as node:
        statuses = send(node.port, [no_pixels, short, other, good])
        assert statuses[:2] == [0xA900, 0xA900], "a film without usable pixels gets a failure status"
        assert statuses[2:] == [0x0000, 0x0000]
        wait_until(lambda: len(recorder.reports()) == 1, 60, "the good film's SR")
        assert referenced_film(recorder.reports()[0]) == pydicom.dcmread(good).SOPInstanceUID
        # still serving, and a caller not in --allowed_ae is refused at association
        assert send(node.port, [good]) == [0x0000]
        stranger = AE(ae_title="STRANGER")
        stranger.add_requested_context(uid.DigitalXRayImageStorageForPresentation)
        association = stranger.associate("127.0.0.1", node.port, ae_title="CXR_VIT")
        assert association.is_rejected
    assert node.spool.counts()["failed"] == 0


def test_an_aborted_association_loses_nothing_acknowledged(sr_only, recorder, tmp_path):
    films = write_films(tmp_path / "films", 4)
    with start_node(sr_only, tmp_path, recorder.destination) as node:
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(uid.DigitalXRayImageStorageForPresentation, uid.ExplicitVRLittleEndian)
        association = ae.associate("127.0.0.1", node.port, ae_title="CXR_VIT")
        acknowledged = [path for path in films[:3] if association.send_c_store(path).Status == 0x0000]
        association.abort()
        assert len(acknowledged) == 3
        wait_until(lambda: len(recorder.reports()) == 3, 60, "the SRs of the acknowledged films")
    assert {referenced_film(sr) for sr in recorder.reports()} == {
        pydicom.dcmread(path).SOPInstanceUID for path in acknowledged
    }


def test_four_senders_at_once_give_exactly_one_sr_per_film(sr_only, recorder, tmp_path):
    count = 12  # a film each, per sender, is enough to interleave them; 48 films are 3 of the node's batches
    films = [write_films(tmp_path / f"films{sender}", count, offset=count * sender) for sender in range(4)]
    statuses = {}
    with start_node(sr_only, tmp_path, recorder.destination, batch_size=16) as node:

        def sender(index: int) -> None:
            statuses[index] = send(node.port, films[index], calling=f"SENDER{index}")

        threads = [threading.Thread(target=sender, args=(index,)) for index in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert all(statuses[index] == [0x0000] * count for index in range(4))
        wait_until(lambda: len(recorder.reports()) >= 4 * count, 120, f"{4 * count} SRs")
    reports = recorder.reports()
    assert len(reports) == 4 * count, "no SR sent twice"
    assert len({sr.SOPInstanceUID for sr in reports}) == 4 * count
    assert {referenced_film(sr) for sr in reports} == {
        pydicom.dcmread(path).SOPInstanceUID for group in films for path in group
    }


def test_results_wait_while_the_destination_is_down(sr_only, tmp_path):
    peer = Recorder().start()
    peer.stop()  # its port is known and nothing listens there
    films = write_films(tmp_path / "films", 2)
    with start_node(sr_only, tmp_path, peer.destination) as node:
        assert send(node.port, films) == [0x0000] * 2
        wait_until(lambda: node.spool.counts()["outbox"] == 2, 60, "2 results queued")
        peer.start()  # the destination comes back on its port
        try:
            wait_until(lambda: len(peer.reports()) == 2, 30, "the queued SRs")
        finally:
            peer.stop()
    assert node.spool.counts() == {"incoming": 0, "outbox": 0, "sent": 2, "failed": 0}


def test_sigkill_and_restart_give_every_acknowledged_film_one_result(sr_only_model, tmp_path):
    films = write_films(tmp_path / "films", 6)
    peer = Recorder().start()
    peer.stop()  # down during the first run: whatever the kill interrupts, nothing was delivered before it
    arguments = [
        "--model", str(sr_only_model), "--port", "0", "--allowed_ae", "MODALITY", "--destination", peer.destination,
        "--output_dir", str(tmp_path / "queue"), "--device", "cpu", "--batch_size", "4",
        "--retry_interval", "0.3", "--log_level", "DEBUG",
    ]  # fmt: skip
    process, port = start_node_process(arguments, tmp_path / "first.log")
    try:
        assert send(port, films) == [0x0000] * 6
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    peer.start()
    process, port = start_node_process(arguments, tmp_path / "second.log")
    wanted = {pydicom.dcmread(path).SOPInstanceUID for path in films}
    try:
        wait_until(lambda: {referenced_film(sr) for sr in peer.reports()} == wanted, 120, "6 films' SRs")
        delivered = len(peer.reports())
        assert send(port, films[:1]) == [0x0000], "a film sent again after its result was delivered"
        wait_until(lambda: len(peer.reports()) > delivered, 60, "the result of the film sent again")
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
        peer.stop()
    result_uids: dict[str, set[str]] = {}
    for sr in peer.reports():
        result_uids.setdefault(referenced_film(sr), set()).add(sr.SOPInstanceUID)
    assert set(result_uids) == wanted
    assert all(len(uids) == 1 for uids in result_uids.values()), "a film got two different results"
    assert "resuming" in (tmp_path / "second.log").read_text()
    logs = (tmp_path / "first.log").read_text() + (tmp_path / "second.log").read_text()
    assert "received film" in logs and "SECRETSURNAME" not in logs and "PID-4711" not in logs
