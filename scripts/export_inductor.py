"""Export a cxr-vit model as a static int8 program for the CPU, compiled by torch.compile (Inductor) where it runs.

    python scripts/export_inductor.py --model outputs/quickstart --output_dir outputs/quickstart_inductor \
        --calibration_dataset data/nih_prepared [--calibration_images 256]
    python scripts/predict.py --backend inductor --model outputs/quickstart_inductor xrays/ --output preds.csv

The model's forward on the normalised pixel batch is captured by torch.export (dynamic batch axis) and quantized
with PyTorch 2 export quantization (torchao's PT2E flow, x86 Inductor quantizer): uint8 activations, int8 weights
per output channel, every linear layer and the patch embedding, the ranges fixed on the first --calibration_images
images of the prepared set's --calibration_split (validation by default, never the test split). At run time
Inductor lowers it to oneDNN's int8 GEMMs (VNNI, AMX-INT8), and --precision auto runs the rest in bf16 where the
CPU has it natively.

OUT gets model.pt2 (torch.export.save; int8 weights) beside a copy of the model's config.json (labels, thresholds,
preprocessing) and its preprocessor_config.json, so predict.py, evaluate.py, app.py and the DICOM scripts
--backend inductor preprocess and threshold as for the PyTorch model. export.json records settings, versions, the
calibration and the logit difference from PyTorch on a seeded batch (reached, not a tolerance: an int8 model's
measure is its AUC on real images). Needs the deploy extra: pip install -e ".[deploy]".

Exit code: 0 exported, 2 bad arguments (model, dataset, options).
"""

import argparse
import json
import logging
import sys

from cxr_vit.cli import add_calibration_arguments, calibration_images
from cxr_vit.data import NIHDataError
from cxr_vit.inductor_export import export_inductor
from cxr_vit.prediction import ModelLoadError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="A cxr-vit model folder or Hub id (only read).")
    parser.add_argument("--output_dir", required=True, help="Where model.pt2, the configs and export.json go.")
    add_calibration_arguments(parser, required=True)
    args = parser.parse_args(argv)
    try:
        record = export_inductor(args.model, args.output_dir, calibration_images(parser, args))
    except (ModelLoadError, NIHDataError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps({"int8_check": record["int8_check"], "calibration": record["calibration"]}, indent=2))
    print(f"wrote {args.output_dir}/model.pt2 (int8, static), config.json, export.json")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(main())
