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


# Above the dense bf16 peak of any single GPU (H100 / H200 SXM: 0.99e15 FLOP/s): a rate that implies more was
# not timed to the GPU's finish.
PHYSICAL_PEAK_FLOPS = 2e15
RATE_KEYS = ("notebook_end_to_end_img_per_s", "ours_model_only_img_per_s", "ours_plain_loop_img_per_s")


def measured_rates(tmp_path, model_name: str, image_size: int, batch_size: int, device: str) -> dict:
    """scripts/benchmark.py's GPU section (:func:`measure_gpu`) on synthetic films, uncompiled."""
    import numpy as np
    from PIL import Image

    from cxr_vit.benchmarks.arguments import BenchmarkArguments
    from cxr_vit.benchmarks.gpu import measure_gpu
    from cxr_vit.benchmarks.synthetic import synthetic_xray
    from cxr_vit.data.cache import write_cache
    from cxr_vit.data.transforms import EvalGeometry

    paths = []
    for index in range(16):  # one notebook-recipe batch of PNGs
        paths.append(tmp_path / f"{index:08d}_000.png")
        Image.fromarray(synthetic_xray(index, size=256)).save(paths[-1])
    side = int(image_size / 0.9)
    images = [Image.fromarray(synthetic_xray(index, size=side)) for index in range(batch_size)]
    labels = (np.random.default_rng(0).random((batch_size, 15)) < 0.2).astype(np.float32)
    write_cache(tmp_path / "cache", lambda a, b: images[a:b], labels, EvalGeometry(image_size, side, "bicubic"))
    args = BenchmarkArguments(model_name=model_name, image_size=image_size, batch_size=batch_size, gpu_steps=5,
                              gpu_warmup_steps=2, num_workers=2, torch_compile=False)  # fmt: skip
    return measure_gpu(args, paths, labels[:16], tmp_path / "cache", device=device)


def test_benchmark_rates_are_real_gpu_rates(tmp_path):
    """ViT-B/16 at 224: every rate is positive and physically possible for one GPU (the timing waits for the
    device), the model alone is at least as fast as the loop that also feeds it, and ours (bf16, batch 64, fused
    AdamW) beats the notebook recipe (fp32, batch 16, PNG decoding per image)."""
    from cxr_vit.benchmarks.flops import measure_train_flops

    results = measured_rates(tmp_path, "vit_base_patch16_224", 224, 64, "cuda")
    flops_per_image = measure_train_flops("vit_base_patch16_224", [224])["224"]["gflop"] * 1e9
    for key in RATE_KEYS:
        assert 0 < results[key] * flops_per_image < PHYSICAL_PEAK_FLOPS, (key, results[key])
    assert results["ours_model_only_img_per_s"] >= 0.8 * results["ours_plain_loop_img_per_s"], results
    assert results["ours_model_only_img_per_s"] > results["notebook_end_to_end_img_per_s"], results
    assert results["device"] == torch.cuda.get_device_name() and results["status"] == "measured"
