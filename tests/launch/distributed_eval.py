"""Evaluate a saved model's validation split with MultiLabelTrainer; rank 0 writes the metrics as JSON.

tests/test_multinode.py calls ``main`` in one process, against the metrics a two-node run gathered. By hand:
python -m torch.distributed.run --nproc_per_node 2 tests/launch/distributed_eval.py MODEL DATASET OUT.json
"""

import json
import sys

import datasets
from transformers import AutoModelForImageClassification, TrainingArguments

from cxr_vit.data.gpu_augment import BatchImageTransform
from cxr_vit.data.transforms import ModelImages, collate_images, eval_geometry
from cxr_vit.metrics import compute_metrics
from cxr_vit.modeling import data_config
from cxr_vit.training import MultiLabelTrainer


def counting_metrics(eval_prediction):
    metrics = compute_metrics(eval_prediction)
    metrics["rows_seen"] = len(eval_prediction.label_ids)
    return metrics


def main(model_dir: str, dataset_dir: str, output: str) -> None:
    model = AutoModelForImageClassification.from_pretrained(model_dir)
    split = datasets.load_dataset(dataset_dir)["validation"]
    split = split.with_transform(ModelImages(eval_geometry(data_config(model))))
    args = TrainingArguments(
        output_dir=output + ".run",
        per_device_eval_batch_size=16,
        report_to="none",
        use_cpu=True,
        remove_unused_columns=False,
    )
    trainer = MultiLabelTrainer(
        model=model,
        args=args,
        data_collator=collate_images,
        compute_metrics=counting_metrics,
        batch_transform=BatchImageTransform(data_config(model)),
    )
    metrics = trainer.evaluate(split)
    if trainer.is_world_process_zero():
        metrics["world_size"] = args.world_size
        with open(output, "w") as f:
            json.dump(metrics, f)


if __name__ == "__main__":
    main(*sys.argv[1:4])
