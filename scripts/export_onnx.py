"""Export a cxr-vit model to ONNX for CPU inference with ONNX Runtime, optionally int8, verified at once.

    python scripts/export_onnx.py --model outputs/quickstart --output_dir outputs/quickstart_onnx [--quantize int8]
    python scripts/export_onnx.py --model outputs/quickstart --output_dir outputs/quickstart_int8_static \
        --quantize int8_static --calibration_dataset data/nih_prepared [--calibration_images 256]
    python scripts/predict.py --backend onnx --model outputs/quickstart_onnx xrays/ --output preds.csv

--quantize int8 is ONNX Runtime's dynamic quantization (activation ranges computed per batch at run time);
int8_static is its static QDQ quantization: the ranges are fixed on the first --calibration_images images of the
prepared set's --calibration_split (validation by default, never the test split), with per-channel int8 weights and
uint8 activations, the settings its VNNI kernels run fastest.

OUT gets model.onnx (the model's forward on the normalised pixel batch, dynamic batch axis) beside a copy of the
model's config.json (labels, thresholds, preprocessing) and its preprocessor_config.json, so predict.py, evaluate.py
and app.py --backend onnx preprocess and threshold as for the PyTorch model. The ONNX and PyTorch logits are
compared on a seeded batch before anything is kept: fp32 must agree to 1e-4 (else exit 1, nothing written);
int8's difference is reported as reached. export.json records settings, versions and the differences.
Needs the deploy extra: pip install -e ".[deploy]".

Exit code: 0 exported and verified, 1 the fp32 check failed, 2 bad arguments (model, options).
"""

import argparse
import json
import logging
import sys

from cxr_vit.cli import add_calibration_arguments, calibration_images
from cxr_vit.data import NIHDataError
from cxr_vit.onnx_export import QUANTIZATIONS, ExportError, export_onnx
from cxr_vit.prediction import ModelLoadError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="A cxr-vit model folder or Hub id (only read).")
    parser.add_argument("--output_dir", required=True, help="Where model.onnx, the configs and export.json go.")
    parser.add_argument(
        "--quantize",
        choices=QUANTIZATIONS,
        default=None,
        help="int8: ORT dynamic quantization; int8_static: static QDQ, calibrated on --calibration_dataset.",
    )
    add_calibration_arguments(parser, required=False)
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's).")
    args = parser.parse_args(argv)
    if (args.quantize == "int8_static") != (args.calibration_dataset is not None):
        parser.error("--quantize int8_static needs --calibration_dataset (its images fix the activation ranges), "
                     "and only it takes one")  # fmt: skip
    try:
        calibration = calibration_images(parser, args)
        record = export_onnx(
            args.model, args.output_dir, quantize=args.quantize, opset=args.opset, calibration=calibration
        )
    except (ModelLoadError, NIHDataError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except ExportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    checks = {name: record[name] for name in ("fp32_check", "int8_check") if name in record}
    print(json.dumps(checks, indent=2))
    print(f"wrote {args.output_dir}/model.onnx ({args.quantize or 'fp32'}), config.json, export.json")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(main())
