"""Predict the chest films of a DICOMweb server's studies and store the SR and overlay back.

    python scripts/dicomweb_predict.py --url http://127.0.0.1:8042/dicom-web --user u --password p \
        --model outputs/quickstart --study 1.2.826.0.1.3680043.8.498.1 --output preds.csv
    python scripts/dicomweb_predict.py --url ... --query ModalitiesInStudy=DX,StudyDate=20240101-20241231 ... --resume

Finds the CR/DX films of the --study UIDs and of the studies matching --query (QIDO-RS study filters), fetches each
(WADO-RS, in its stored transfer syntax), predicts through the same inference path as predict.py, writes one CSV
row per film (named by its WADO-RS path; the columns of predict.py's CSV) and stores each film's SR (TID 1500) and
heatmap overlay back on the server (STOW-RS, in the film's study). --output_dir holds the work queue (default:
beside the CSV): a killed run continues with --resume, which skips the films already in the CSV and stores the
results not yet stored. The password can also come from CXR_VIT_DICOMWEB_PASSWORD. See docs/dicom.md.

Exit code: 0 all films predicted and stored, 1 some films could not be read (named in <output_dir>/failed/),
2 bad arguments, 3 the server could not be reached or refused the results (they stay queued for --resume).
"""

import argparse
import logging
import sys
from pathlib import Path

from cxr_vit.cli import add_backend_argument, add_runtime_arguments, check_runtime_arguments
from cxr_vit.dicom.films import predictor_for_results
from cxr_vit.prediction import ModelLoadError

try:
    from requests import RequestException

    from cxr_vit.dicom.sending import DeliveryError, dicomweb_client, dicomweb_password
    from cxr_vit.dicom.web import find_films, parse_query, predict_dicomweb
except ModuleNotFoundError as missing:  # pynetdicom, dicomweb-client: the [dicom] extra
    sys.exit(f"error: {missing.name} is not installed; the DICOMweb client needs: pip install -e '.[dicom]'")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True, help="The DICOMweb base URL (Orthanc: http://HOST:8042/dicom-web).")
    parser.add_argument("--study", nargs="+", default=[], metavar="UID", help="Study Instance UIDs to predict.")
    parser.add_argument("--query", action="append", default=[], metavar="KEY=VALUE,...", help="QIDO-RS study filters.")
    parser.add_argument("--user", help="HTTP basic-auth user.")
    parser.add_argument("--password", help="Its password (or set CXR_VIT_DICOMWEB_PASSWORD).")
    parser.add_argument(
        "--model", required=True, help="A cxr-vit model folder or Hub id (an export with --backend onnx)."
    )
    add_backend_argument(parser)
    parser.add_argument("--thresholds", metavar="JSON", help="A thresholds.json of scripts/evaluate.py.")
    parser.add_argument("--output", required=True, help="The predictions CSV.")
    parser.add_argument("--output_dir", help="The work queue and the results sent (default: <output>.dicomweb/).")
    parser.add_argument("--resume", action="store_true", help="Continue a killed run with the same --output.")
    add_runtime_arguments(parser, batch_size=16)
    args = parser.parse_args(argv)
    check_runtime_arguments(parser, args)
    if not args.study and not args.query:
        parser.error("give --study UID ... and/or --query KEY=VALUE,...")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    password = dicomweb_password(args.password)
    try:
        query = parse_query(args.query)
        predictor, algorithm = predictor_for_results(args)
    except (ModelLoadError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        films = find_films(dicomweb_client(args.url, args.user, password), args.study, query)
        print(f"{len(films)} CR/DX film(s) found at {args.url}", file=sys.stderr)
        run = predict_dicomweb(
            args.url,
            films,
            predictor,
            algorithm,
            args.output,
            args.output_dir or Path(f"{args.output}.dicomweb"),
            username=args.user,
            password=password,
            resume=args.resume,
            batch_size=args.batch_size,
        )
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (DeliveryError, RequestException) as err:
        print(f"error: {args.url}: {err} (run again with --resume)", file=sys.stderr)
        return 3
    print(
        f"predicted {run.predicted} film(s) into {args.output}"
        + (f" ({run.already} already there)" if run.already else "")
        + f", stored {run.stored} result set(s) at {args.url}"
        + (f"; {run.failed} could not be read" if run.failed else "")
    )
    return 1 if run.failed else 0


if __name__ == "__main__":
    sys.exit(main())
