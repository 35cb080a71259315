"""Measure what an epoch of each --finetune mode costs: scripts/train.py run once per mode on the same data.

    python docs/measure_finetune_modes.py --dataset_name data/nih_mini_prepared --output_dir outputs/finetune_modes

Prints a Markdown table (the one in docs/training.md): seconds per epoch (train_runtime / epochs: training steps,
the per-epoch evaluation and checkpoint included), the linear probe's one-off feature caching, the training
steps' steady images/s, trainable parameters and the test macro AUC.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
# A 2-block ViT-Tiny from random weights at the bundled 64 px, as the learnability tests train it.
RECIPE = {"model_name": "vit_tiny_patch16_224", "pretrained": False, "image_size": 64, "model_kwargs": {"depth": 2},
          "drop_path_rate": 0.0, "per_device_train_batch_size": 16, "per_device_eval_batch_size": 64,
          "save_total_limit": 1, "report_to": "none", "seed": 0}  # fmt: skip
LEARNING_RATES = {"full": 1e-3, "partial:1": 1e-3, "lora": 1e-3, "linear": 1e-2}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset_name", default="data/nih_mini_prepared")
    parser.add_argument("--output_dir", default="outputs/finetune_modes", type=Path)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--modes", nargs="+", default=list(LEARNING_RATES))
    args = parser.parse_args()
    rows = []
    for mode in args.modes:
        output = args.output_dir / mode.replace(":", "_")
        shutil.rmtree(output, ignore_errors=True)  # train.py would resume from a checkpoint left there
        output.mkdir(parents=True)
        config = output / "recipe.yaml"
        settings = {**RECIPE, "finetune": mode, "num_train_epochs": args.epochs, "learning_rate": LEARNING_RATES[mode]}
        config.write_text(yaml.safe_dump(settings))
        command = [sys.executable, str(REPO / "scripts/train.py"), "--config", str(config), "--dataset_name",
                   args.dataset_name, "--output_dir", str(output)]  # fmt: skip
        subprocess.run(command, check=True, cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        results = json.loads((output / "all_results.json").read_text())
        finetune = json.loads((output / "config.json").read_text())["cxr_vit_finetune"]
        caching = results.get("linear_probe_feature_seconds")  # linear only
        rows.append(
            f"| `{mode}` | {results['train_runtime'] / results['epoch']:.2f} | "
            + (f"{caching:.1f}" if caching is not None else "-")
            + f" | {results['train_steady_images_per_second']:.0f} | {finetune['trainable_parameters']:,} | "
            f"{results['test_auc_macro']:.3f} |"
        )
    print(f"load average before the last run: {os.getloadavg()[0]:.1f}")
    print("| mode | s / epoch | feature caching (s, once) | train images/s | trainable parameters | test macro AUC |")
    print("|---|---:|---:|---:|---:|---:|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
