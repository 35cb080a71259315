"""Measure the DICOM node's throughput: films in by C-STORE, SRs (and overlays) out to a storage peer, end to end.

    python docs/measure_dicom_node.py --films 32 --output_dir outputs/node_throughput

For each model (random weights, no download: a ViT-Tiny at 64 px and the default ViT-B/16 at 224 px) and each case
(SR only: thresholds no film reaches; SR + one overlay: thresholds that make one finding positive on every film), it
starts the node in this process with a storage peer on loopback, sends ``--films`` real NIH films as 12-bit DX
files of ``--side`` pixels (the mini set's films enlarged: the size of the NIH release) from one association, and
times from the first C-STORE to the last result received. Prints a Markdown table (the one in docs/dicom.md).
"""

import argparse
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pydicom
import torch
from PIL import Image
from pydicom import uid
from pydicom.dataset import Dataset, FileMetaDataset
from pynetdicom import AE, AllStoragePresentationContexts, evt

from cxr_vit.constants import LABELS
from cxr_vit.dicom.films import algorithm_info
from cxr_vit.dicom.node import DicomNode
from cxr_vit.dicom.sending import CStoreDestination
from cxr_vit.evaluation import store_thresholds, threshold_config_entries
from cxr_vit.modeling import create_model, save_model
from cxr_vit.prediction import Predictor

REPO = Path(__file__).resolve().parents[1]
MODELS = {"ViT-Tiny, 64 px": ("vit_tiny_patch16_224", 64), "ViT-B/16, 224 px (default)": ("vit_base_patch16_224", 224)}
CASES = {"SR only": None, "SR + 1 overlay": "Effusion"}


def write_films(folder: Path, count: int, side: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, source in enumerate(sorted((REPO / "data" / "nih_mini" / "images").glob("*.png"))[:count]):
        gray = Image.open(source).convert("L").resize((side, side), Image.BICUBIC)
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
        ds.SOPClassUID, ds.Modality = uid.DigitalXRayImageStorageForPresentation, "DX"
        ds.PatientName, ds.PatientID = "MEASURE^NODE", "M1"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = uid.generate_uid(), uid.generate_uid()
        ds.set_pixel_data((np.asarray(gray, np.uint16) * 16).astype(np.uint16), "MONOCHROME2", 12)
        path = folder / f"{index:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def measure(predictor: Predictor, model: Path, films: list[Path], work: Path, batch_size: int) -> float:
    """Films per second from the first C-STORE to the last result at the peer."""
    received, done = [], threading.Event()
    expected = len(films) * (2 if predictor.thresholds.min() <= 1.0 else 1)  # one overlay per film, or none

    def store(event) -> int:
        received.append(event.request.AffectedSOPInstanceUID)
        if len(received) >= expected:
            done.set()
        return 0x0000

    peer = AE(ae_title="PACS")
    peer.supported_contexts = AllStoragePresentationContexts
    server = peer.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, store)])
    destination = CStoreDestination("127.0.0.1", server.server_address[1], "PACS")
    node = DicomNode(
        predictor, algorithm_info(predictor, model), work, destination, "CXR_VIT", ["MODALITY"],
        batch_size=batch_size, batch_wait=0.2,
    ).start()  # fmt: skip
    try:
        sender = AE(ae_title="MODALITY")
        sender.add_requested_context(uid.DigitalXRayImageStorageForPresentation, uid.ExplicitVRLittleEndian)
        association = sender.associate("127.0.0.1", node.port, ae_title="CXR_VIT")
        started = time.perf_counter()
        for path in films:
            assert association.send_c_store(pydicom.dcmread(path)).Status == 0x0000
        association.release()
        assert done.wait(3600), "results did not arrive"
        return len(films) / (time.perf_counter() - started)
    finally:
        node.stop()
        server.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--films", type=int, default=32)
    parser.add_argument("--side", type=int, default=1024)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--output_dir", type=Path, default=Path("outputs/node_throughput"))
    args = parser.parse_args()
    shutil.rmtree(args.output_dir, ignore_errors=True)
    films = write_films(args.output_dir / "films", args.films, args.side)
    print(f"{args.films} films of {args.side} x {args.side} px, batch {args.batch_size}, torch threads "
          f"{torch.get_num_threads()}\n")  # fmt: skip
    print("| model | results | films/s |\n|---|---|---|")
    for name in args.models:
        architecture, size = MODELS[name]
        for case, positive in CASES.items():
            folder = args.output_dir / f"{architecture}-{case.replace(' ', '_')}"
            torch.manual_seed(0)
            save_model(create_model(architecture, pretrained=False, image_size=size), folder / "model")
            thresholds = {label: (0.0 if label == positive else 1.0 + 1e-6) for label in LABELS}
            store_thresholds(folder / "model", threshold_config_entries(thresholds, {"rule": "measurement"}))
            predictor = Predictor.from_pretrained(folder / "model", device="cpu")
            rate = measure(predictor, folder / "model", films, folder / "queue", args.batch_size)
            print(f"| {name} | {case} | {rate:.2f} |", flush=True)


if __name__ == "__main__":
    main()
