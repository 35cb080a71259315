"""Training FLOPs per image by input size: what a resolution costs, independent of the machine."""

from __future__ import annotations

import timm
import torch


def measure_train_flops(model_name: str, sizes: list[int]) -> dict[str, dict[str, float]]:
    """FLOPs of one training step (forward + backward) per image at each input size, relative to the first.

    Counted by ``torch.utils.flop_counter.FlopCounterMode`` on the meta device: exact for the matrix products
    and attention, machine-independent, and instant (nothing is computed).
    """
    from torch.utils.flop_counter import FlopCounterMode

    counts = {}
    for size in sizes:
        with torch.device("meta"):
            model = timm.create_model(model_name, pretrained=False, num_classes=15, img_size=size)
            images = torch.randn(1, 3, size, size)
        counter = FlopCounterMode(display=False)
        with counter:
            model(images).sum().backward()
        counts[size] = counter.get_total_flops()
    return {str(size): {"gflop": flops / 1e9, "relative": flops / counts[sizes[0]]} for size, flops in counts.items()}


def forward_flops_per_image(forward, inputs: torch.Tensor) -> float:
    """FLOPs of ``forward(inputs)`` per image, counted while it runs (``FlopCounterMode``: the matrix products and
    attention, 2 per multiply-add): the work a benchmark divides by its time. Attention is counted through SDPA's
    math backend (its matrix products; the CPU's fused SDPA kernel has no FLOP formula and would count as 0)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode(), sdpa_kernel(SDPBackend.MATH):
        forward(inputs)
    return counter.get_total_flops() / len(inputs)
