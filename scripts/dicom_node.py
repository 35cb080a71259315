"""A DICOM node: receive chest films by C-STORE, predict, send the SR and heatmap overlay to a PACS.

    python scripts/dicom_node.py --model outputs/quickstart --port 11112 --ae_title CXR_VIT \
        --allowed_ae MODALITY1 ORTHANC --destination 127.0.0.1:4242:ORTHANC --output_dir node_queue/
    python scripts/dicom_node.py ... --dicomweb http://127.0.0.1:8042/dicom-web --dicomweb_user u --dicomweb_password p
    python scripts/dicom_node.py --backend onnx --model outputs/quickstart_onnx ...   # SR only: no heatmaps on exports

Accepts CR and DX films (for presentation or processing; DR systems send DX) from the --allowed_ae callers only
(others are rejected at association); other storage objects are acknowledged and dropped; a malformed film gets a
failure status. Each film is on disk (fsynced, in --output_dir/incoming) before it is acknowledged; the model
predicts in batches; the SR (TID 1500) and the overlay go to --destination by C-STORE or to --dicomweb by STOW-RS,
and stay queued in --output_dir/outbox while the destination is down. Kill it at any time: a restart with the same
--output_dir resumes. It listens on 127.0.0.1 unless --host says otherwise; logs never carry patient names.
SIGTERM or Ctrl-C stops it after the current batch. See docs/dicom.md.

Exit code: 0 stopped by a signal, 2 bad arguments (model, destination, port in use).
"""

import argparse
import logging
import signal
import sys
import threading

from cxr_vit.cli import add_backend_argument, add_runtime_arguments, check_runtime_arguments
from cxr_vit.dicom.films import predictor_for_results
from cxr_vit.prediction import ModelLoadError

try:
    from cxr_vit.dicom.node import DicomNode, quiet_library_logs
    from cxr_vit.dicom.sending import CStoreDestination, StowDestination, dicomweb_password
except ModuleNotFoundError as missing:  # pynetdicom: the [dicom] extra
    sys.exit(f"error: {missing.name} is not installed; the DICOM node needs: pip install -e '.[dicom]'")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model", required=True, help="A cxr-vit model folder or Hub id (an export with --backend onnx or inductor)."
    )
    add_backend_argument(parser)
    parser.add_argument("--thresholds", metavar="JSON", help="A thresholds.json of scripts/evaluate.py.")
    parser.add_argument("--ae_title", default="CXR_VIT", help="The node's AE title (default CXR_VIT).")
    parser.add_argument("--port", type=int, default=11112, help="Port to listen on (0: any free one, printed).")
    parser.add_argument("--host", default="127.0.0.1", help="Address to listen on (default loopback only).")
    parser.add_argument(
        "--allowed_ae", nargs="+", required=True, metavar="AET", help="Calling AE titles allowed to send films."
    )
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--destination", metavar="HOST:PORT:AET", help="Send results by C-STORE to this peer.")
    where.add_argument("--dicomweb", metavar="URL", help="Send results by STOW-RS to this DICOMweb base URL.")
    parser.add_argument("--dicomweb_user", help="HTTP basic-auth user for --dicomweb.")
    parser.add_argument("--dicomweb_password", help="Its password (or set it in CXR_VIT_DICOMWEB_PASSWORD).")
    parser.add_argument("--output_dir", required=True, help="The on-disk queue: received films and results.")
    parser.add_argument("--batch_wait", type=float, default=0.5, help="Seconds to wait for a batch to fill.")
    parser.add_argument("--retry_interval", type=float, default=10.0, help="Seconds between tries of a down peer.")
    parser.add_argument("--log_level", default="INFO", choices=["DEBUG", "INFO", "WARNING"])
    add_runtime_arguments(parser, batch_size=16)
    args = parser.parse_args(argv)
    check_runtime_arguments(parser, args)

    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    quiet_library_logs()
    try:
        if args.dicomweb:
            destination = StowDestination(args.dicomweb, args.dicomweb_user, dicomweb_password(args.dicomweb_password))
        else:
            destination = CStoreDestination.parse(args.destination, calling_ae_title=args.ae_title)
        predictor, algorithm = predictor_for_results(args)
        node = DicomNode(
            predictor,
            algorithm,
            args.output_dir,
            destination,
            args.ae_title,
            args.allowed_ae,
            host=args.host,
            port=args.port,
            batch_size=args.batch_size,
            batch_wait=args.batch_wait,
            retry_interval=args.retry_interval,
        ).start()
    except (ModelLoadError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
    node.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
