"""Push a training output folder to the Hugging Face Hub with a model card rendered from its results.

    python scripts/push_to_hub.py --model_dir outputs/nih_sample_vit_base --repo_id you/cxr-vit-base [--private]

Uploads model.safetensors, config.json (model + image-processor config), training_curves.png, the results
files and README.md. The repo then opens with AutoModelForImageClassification, pipeline("image-classification")
and timm.create_model("hf-hub:<repo_id>", pretrained=True).
"""

import argparse
import logging
import sys

from cxr_vit.hub import HubAccessError, push_model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_dir", required=True, help="A scripts/train.py --output_dir.")
    parser.add_argument("--repo_id", required=True, help="namespace/name (a bare name goes to your namespace).")
    parser.add_argument("--private", action="store_true", help="Create the repo as private.")
    parser.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN or the saved login).")
    args = parser.parse_args(argv)
    try:
        url = push_model(args.model_dir, args.repo_id, token=args.token, private=args.private or None)
    except (HubAccessError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"pushed {args.model_dir} to {url}")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(main())
