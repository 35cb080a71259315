"""Test helpers for the DICOM node: films with a patient's name, a storage peer that records what it gets, a sender,
and a reader of the SR's probabilities."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom import uid
from pynetdicom import AE, AllStoragePresentationContexts, evt
from xray_files import to_bits, write_dicom

REPO = Path(__file__).resolve().parents[1]
MINI_IMAGES = REPO / "data" / "nih_mini" / "images"
PATIENT_NAME = "SECRETSURNAME^JANE"  # must never show in a log
TRACKING_IDENTIFIER = "112039"  # DCM code of the measurement group's label


def write_films(folder: Path, count: int, studies: int = 1, offset: int = 0) -> list[Path]:
    """``count`` real NIH films (64 px) as 12-bit DX files with a patient's name, spread over ``studies`` studies."""
    folder.mkdir(parents=True, exist_ok=True)
    study_uids = [uid.generate_uid(entropy_srcs=[str(folder), str(index)]) for index in range(studies)]
    names = sorted(path.name for path in MINI_IMAGES.glob("*.png"))[offset : offset + count]
    paths = []
    for index, name in enumerate(names):
        path = write_dicom(folder / f"{index:03d}.dcm", to_bits(np.asarray(Image.open(MINI_IMAGES / name)), 12))
        ds = pydicom.dcmread(path)
        ds.PatientName, ds.PatientID = PATIENT_NAME, "PID-4711"
        ds.StudyInstanceUID = study_uids[index % studies]
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid.generate_uid(entropy_srcs=[str(folder), name])
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def send(port: int, films: Sequence[Path | pydicom.Dataset], calling: str = "MODALITY", called: str = "CXR_VIT"):
    """C-STORE each film in one association; returns the status codes (None where there was no answer)."""
    ae = AE(ae_title=calling)
    ae.requested_contexts = AllStoragePresentationContexts[:120]
    association = ae.associate("127.0.0.1", port, ae_title=called)
    assert association.is_established, "the node refused the association"
    try:
        return [getattr(association.send_c_store(film), "Status", None) for film in films]
    finally:
        association.release()


class Recorder:
    """A storage peer on loopback recording every instance it is sent, duplicates included (``received``)."""

    def __init__(self, ae_title: str = "PACS"):
        self.ae_title = ae_title
        self.received: list[pydicom.Dataset] = []
        self.lock = threading.Lock()
        self.server = None
        self.port = 0

    def _store(self, event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        with self.lock:
            self.received.append(ds)
        return 0x0000

    def start(self) -> Recorder:
        ae = AE(ae_title=self.ae_title)
        ae.supported_contexts = AllStoragePresentationContexts
        self.server = ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)]
        )
        self.port = self.server.server_address[1]
        return self

    def stop(self) -> None:
        self.server.shutdown()

    def reports(self) -> list[pydicom.Dataset]:
        with self.lock:
            return [ds for ds in self.received if ds.Modality == "SR"]

    def overlays(self) -> list[pydicom.Dataset]:
        with self.lock:
            return [ds for ds in self.received if ds.Modality != "SR"]

    @property
    def destination(self) -> str:
        return f"127.0.0.1:{self.port}:{self.ae_title}"


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(0.1)


def referenced_film(sr: pydicom.Dataset) -> str:
    """The SOP Instance UID of the film an SR reports on (its evidence)."""
    (study,) = sr.CurrentRequestedProcedureEvidenceSequence
    (series,) = study.ReferencedSeriesSequence
    (film,) = series.ReferencedSOPSequence
    return film.ReferencedSOPInstanceUID


def sr_probabilities(sr: pydicom.Dataset) -> dict[str, float]:
    """label -> the probability NUM of its measurement group (found by the group's tracking identifier)."""
    found: dict[str, float] = {}

    def walk(items) -> None:
        for item in items:
            children = item.get("ContentSequence", [])
            label = next(
                (
                    child.TextValue
                    for child in children
                    if child.ValueType == "TEXT" and child.ConceptNameCodeSequence[0].CodeValue == TRACKING_IDENTIFIER
                ),
                None,
            )
            numbers = [child for child in children if child.ValueType == "NUM"]
            if label is not None and numbers:
                found[label] = float(numbers[0].MeasuredValueSequence[0].NumericValue)
            walk(children)

    walk(sr.ContentSequence)
    return found


def start_node_process(arguments: Sequence[str], log: Path) -> tuple[subprocess.Popen, int]:
    """scripts/dicom_node.py in its own process (stderr to ``log``), and the port it says it listens on."""
    with log.open("ab") as handle:  # the child keeps its own copy
        process = subprocess.Popen(
            [sys.executable, str(REPO / "scripts" / "dicom_node.py"), *arguments], stdout=handle, stderr=handle
        )
    pattern = re.compile(r"listening on 127\.0\.0\.1:(\d+)")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if match := pattern.search(log.read_text()):
            return process, int(match.group(1))
        if process.poll() is not None:
            raise AssertionError(f"the node exited with {process.returncode}:\n{log.read_text()}")
        time.sleep(0.2)
    process.kill()
    raise AssertionError(f"the node did not start listening:\n{log.read_text()}")
