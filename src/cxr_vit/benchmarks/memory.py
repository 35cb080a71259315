"""Training memory of a ViT per device: computed from parameter and activation counts, and measured on the CPU.

Computed (no device needed): the parameters, depth, tokens and width are read off the timm model built on the meta
device; the bytes follow from what one training step keeps alive:

- states: fp32 weights, fp32 gradients and AdamW's two fp32 moments, 16 bytes a parameter; FSDP (full shard) over
  G devices keeps 1/G of them, plus the all-gathered weights and gradients of two blocks at a time (the one
  computing and the one prefetched);
- activations saved for the backward pass, per block and image, for N tokens of width D: the fp32 residual stream
  into both LayerNorms (2 x 4 N D), and at ``a`` bytes an activation (2 under bf16 autocast, 4 in fp32) the inputs
  of the qkv, projection and fc1 matmuls (3 a N D), q, k, v and the attention output kept by a fused attention
  kernel (4 a N D; flash attention keeps no N x N matrix), the GELU input and the fc2 input (2 x 4 a N D):
  (8 + 15 a) N D bytes, 38 N D under bf16. With activation checkpointing (``--gradient_checkpointing``) each block
  keeps only its fp32 input (4 N D) and one block's activations exist again during its recomputation;
- bf16 autocast also keeps a bf16 copy of every weight for the step (2 bytes a parameter).

Not counted: the CUDA context and allocator slack, the stem and head's activations, temporary buffers inside
kernels; expect the measured peak a few hundred MB to ~10% higher.

Measured (CPU): the peak resident memory of a fresh process that builds the model and runs two AdamW training steps,
minus the process's resident memory before it built anything.
"""

from __future__ import annotations

import multiprocessing
import resource
from dataclasses import dataclass

import timm
import torch

ADAMW_STATE_BYTES = 16  # fp32 weight + gradient + two moments
PREFETCHED_BLOCKS = 2


@dataclass(frozen=True)
class VitShape:
    """What the memory of a ViT training step depends on."""

    name: str
    image_size: int
    parameters: int
    block_parameters: int
    depth: int
    tokens: int
    width: int


def vit_shape(model_name: str, image_size: int) -> VitShape:
    """Read the counts off the timm model built on the meta device (nothing allocated)."""
    with torch.device("meta"):
        model = timm.create_model(model_name, pretrained=False, num_classes=15, img_size=image_size)
    blocks = list(model.blocks)
    return VitShape(
        name=model_name,
        image_size=image_size,
        parameters=sum(p.numel() for p in model.parameters()),
        block_parameters=sum(p.numel() for p in blocks[0].parameters()),
        depth=len(blocks),
        tokens=model.patch_embed.num_patches + model.num_prefix_tokens,
        width=model.embed_dim,
    )


def block_activation_bytes(shape: VitShape, activation_bytes: int) -> int:
    """Bytes one block saves for the backward pass, per image (module docstring)."""
    return (8 + 15 * activation_bytes) * shape.tokens * shape.width


def computed_peak_bytes(
    shape: VitShape,
    batch_size: int,
    devices: int = 1,
    fsdp: bool = False,
    checkpointing: bool = False,
    bf16: bool = True,
) -> int:
    """Peak bytes per device of one training step with AdamW, per the module docstring's count."""
    activation_bytes = 2 if bf16 else 4
    if fsdp:
        states = ADAMW_STATE_BYTES * shape.parameters / devices
        states += PREFETCHED_BLOCKS * shape.block_parameters * (activation_bytes + 4)  # gathered weights + grads
        weight_copies = 2 * shape.parameters / devices if bf16 else 0  # FSDP2 casts the gathered shard
    else:
        states = ADAMW_STATE_BYTES * shape.parameters
        weight_copies = 2 * shape.parameters if bf16 else 0
    per_block = block_activation_bytes(shape, activation_bytes)
    if checkpointing:
        activations = shape.depth * 4 * shape.tokens * shape.width + per_block
    else:
        activations = shape.depth * per_block
    return int(states + weight_copies + batch_size * activations)


def _train_two_steps(model_name: str, image_size: int, batch_size: int, checkpointing: bool, queue) -> None:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    model = timm.create_model(model_name, pretrained=False, num_classes=15, img_size=image_size)
    model.set_grad_checkpointing(checkpointing)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    pixels = torch.randn(batch_size, 3, image_size, image_size)
    labels = (torch.rand(batch_size, 15) < 0.3).float()
    for _ in range(2):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(pixels), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    queue.put((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)  # ru_maxrss is in KiB


def measured_cpu_peak_bytes(model_name: str, image_size: int, batch_size: int, checkpointing: bool) -> int:
    """Peak resident bytes of two fp32 AdamW steps on the CPU, in a fresh process (its peak is this run's alone)."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_train_two_steps, args=(model_name, image_size, batch_size, checkpointing, queue))
    process.start()
    result = queue.get()
    process.join()
    if process.exitcode != 0:
        raise RuntimeError(f"the memory measurement of {model_name} at {image_size} px failed ({process.exitcode})")
    return result
