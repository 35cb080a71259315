"""Both input pipelines through the Trainer: identical evaluation, and both train with the device augmentation."""

import datasets
import numpy as np
import pytest
import torch

from cxr_vit.data.cache import ensure_cache
from cxr_vit.data.cached_dataset import CachedImageDataset, collate_batch
from cxr_vit.data.gpu_augment import BatchImageTransform
from cxr_vit.data.transforms import ModelImages, collate_images, eval_geometry
from cxr_vit.metrics import compute_metrics
from cxr_vit.modeling import create_model, data_config
from cxr_vit.training import CXRTrainingArguments, MultiLabelTrainer, parse_args


def tiny_model():
    torch.manual_seed(0)
    return create_model("vit_tiny_patch16_224", pretrained=False, image_size=64, model_kwargs={"depth": 2})


def trainer_for(pipeline: str, model, splits, tmp_path, epochs: float = 1.0) -> MultiLabelTrainer:
    args = CXRTrainingArguments(
        output_dir=str(tmp_path / pipeline),
        input_pipeline=pipeline,
        per_device_train_batch_size=32,
        per_device_eval_batch_size=32,
        num_train_epochs=epochs,
        report_to="none",
        save_strategy="no",
        load_best_model_at_end=False,
        use_cpu=True,
    )
    config = data_config(model)
    geometry = eval_geometry(config)
    if pipeline == "cache":
        inputs = {
            name: CachedImageDataset(ensure_cache(split, tmp_path / "cache" / name, geometry))
            for name, split in splits.items()
        }
        collator = collate_batch
    else:
        inputs = {name: split.with_transform(ModelImages(geometry)) for name, split in splits.items()}
        collator = collate_images
    return MultiLabelTrainer(
        model=model,
        args=args,
        train_dataset=inputs["train"],
        eval_dataset=inputs["validation"],
        data_collator=collator,
        compute_metrics=compute_metrics,
        batch_transform=BatchImageTransform(config),
    )


class _Recorder:
    """Wraps a batch transform and records (dtype, training) of each call."""

    def __init__(self, transform: BatchImageTransform):
        self.transform, self.calls = transform, []

    def __call__(self, pixels: torch.Tensor, training: bool) -> torch.Tensor:
        self.calls.append((pixels.dtype, training))
        return self.transform(pixels, training)


@pytest.fixture(scope="module")
def splits(prepared_mini):
    loaded = datasets.load_dataset(str(prepared_mini))
    return {"train": loaded["train"].select(range(96)), "validation": loaded["validation"]}


def test_eval_metrics_are_the_same_on_both_pipelines(splits, tmp_path):
    model = tiny_model()
    from_datasets = trainer_for("datasets", model, splits, tmp_path).evaluate()
    from_cache = trainer_for("cache", model, splits, tmp_path).evaluate()
    assert from_datasets["eval_num_labels_without_auc"] == from_cache["eval_num_labels_without_auc"]
    for name, value in from_datasets.items():
        if name.startswith(("eval_auc", "eval_auprc", "eval_loss", "eval_bce")):
            assert from_cache[name] == value, name  # the same squares, the same device transform: identical


@pytest.mark.parametrize("pipeline", ["cache", "datasets"])
def test_both_pipelines_train_with_augmentation_on_the_device(splits, tmp_path, pipeline):
    model = tiny_model()
    before = [p.detach().clone() for p in model.parameters()]
    trainer = trainer_for(pipeline, model, splits, tmp_path)
    trainer.batch_transform = recorder = _Recorder(trainer.batch_transform)
    trainer.train()
    assert (torch.uint8, True) in recorder.calls  # training batches arrive as uint8 and are augmented
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    history = trainer.state.log_history
    assert any("loss" in entry for entry in history) and not any("epoch_auc_macro" in entry for entry in history)
    assert not any("peak_gpu_memory_gb" in entry for entry in history)  # CPU: nothing to report
    metrics = trainer.evaluate()
    assert (torch.uint8, False) in recorder.calls and np.isfinite(metrics["eval_loss"])


def test_input_pipeline_option_and_worker_defaults(tmp_path):
    _, _, args = parse_args(["--output_dir", str(tmp_path)])
    assert args.input_pipeline == "cache" and args.optim == "adamw_torch_fused"
    assert args.dataloader_num_workers == 0 and args.dataloader_persistent_workers is False  # CPU
    _, _, args = parse_args(["--output_dir", str(tmp_path), "--input_pipeline", "datasets"])
    assert args.input_pipeline == "datasets"
    _, _, args = parse_args(["--output_dir", str(tmp_path), "--dataloader_num_workers", "2"])
    assert args.dataloader_persistent_workers is True
    with pytest.raises(SystemExit):
        parse_args(["--output_dir", str(tmp_path), "--input_pipeline", "pil"])


def test_default_num_workers(monkeypatch):
    from cxr_vit.training.config import default_num_workers

    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert default_num_workers("cache", on_gpu=True) == 4
    assert default_num_workers("datasets", on_gpu=True) == 15
    assert default_num_workers("cache", on_gpu=False) == 0
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert default_num_workers("cache", on_gpu=True) == 2 and default_num_workers("datasets", on_gpu=True) == 1
