"""Checks that need a CUDA device; skipped elsewhere (CI has no GPU). Run them on a GPU machine with
``pytest tests/test_gpu.py``: ``scripts/benchmark.py`` measures the speed, these check the behaviour behind it.
"""

import pytest
import torch
from conftest import TINY_IMAGE_SIZE as IMAGE_SIZE
from conftest import tiny_cache
from training_helpers import tiny_vit_trainer
from transformers import TrainerCallback

from cxr_vit.data.cached_dataset import CachedImageDataset
from cxr_vit.data.gpu_augment import BatchImageTransform
from cxr_vit.modeling import create_model, data_config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


class _FailOnHostSync(TrainerCallback):
    """CUDA's sync debug mode is "error" from the start of step ``after + 1`` to the end of step ``last``.

    User callbacks run before the trainer's own ones, so the mode is set and cleared outside their hooks.
    """

    def __init__(self, after: int, last: int):
        self.after, self.last = after, last

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.after:  # global_step counts finished steps
            torch.cuda.set_sync_debug_mode("error")

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.last:
            torch.cuda.set_sync_debug_mode("default")


def test_training_steps_never_wait_on_the_gpu(tmp_path):
    """Between logs, evaluations and checkpoints a training step queues GPU work and moves on: any
    host-device synchronisation inside steps 3-7 (a .item(), a blocking copy, a non-finite check) raises.
    Step 2's end is where the throughput window starts (one deliberate sync), so the check starts after it."""
    trainer = tiny_vit_trainer(
        tmp_path, per_device_train_batch_size=8, max_steps=9, dataloader_num_workers=2, throughput_skip_steps=2,
        pos_weight=torch.full((15,), 2.0), callbacks=[_FailOnHostSync(after=2, last=7)],
    )  # fmt: skip
    assert trainer.args.bf16 == torch.cuda.is_bf16_supported() and trainer.args.accelerator_config.non_blocking
    try:
        trainer.train()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert trainer.throughput.metrics()["train_steady_images"] == 7 * 8
    assert trainer.peak_gpu_memory_gb() > 0


def test_batch_transform_gives_the_same_inputs_on_gpu_and_cpu(tmp_path):
    """The squares of the cache train.py builds: eval is an exact crop on both devices; training is finite."""
    model = create_model("vit_tiny_patch16_224", pretrained=False, image_size=IMAGE_SIZE)
    transform = BatchImageTransform(data_config(model))
    cache = tiny_cache(tmp_path / "cache", count=8)
    batch = CachedImageDataset(cache).__getitems__(list(range(8)))["pixel_values"]
    on_cpu = transform(batch, training=False)
    on_gpu = transform(batch.cuda(), training=False).cpu()
    torch.testing.assert_close(on_gpu, on_cpu, rtol=0, atol=1e-5)
    torch.manual_seed(0)
    augmented = transform(batch.cuda(), training=True)
    assert augmented.shape == (8, 3, IMAGE_SIZE, IMAGE_SIZE) and torch.isfinite(augmented).all()
