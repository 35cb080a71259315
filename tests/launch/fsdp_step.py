"""One SGD step of a 2-block ViT sharded with torch's FSDP2 over gloo on the CPU, the timm blocks as units; rank 0
saves the gathered weights as the Trainer does under --fsdp (one plain safetensors file).

python -m torch.distributed.run --nproc_per_node 2 tests/launch/fsdp_step.py OUTPUT_DIR

accelerate keeps its FSDP plugin for accelerator devices only, so the Trainer's --fsdp is refused on a CPU; this
checks what can be checked here: the wrapping units, a sharded step equal to the unsharded one, the gathered save.
"""

import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import fully_shard

from cxr_vit.modeling import create_model, timm_state_dict
from cxr_vit.training.distributed import fsdp_block_classes

BATCH = 8  # global; each of the two ranks takes half


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    pixels = torch.randn(BATCH, 3, 32, 32, generator=generator)
    return pixels, (torch.rand(BATCH, 15, generator=generator) < 0.3).float()


def tiny_model():
    torch.manual_seed(0)
    return create_model("vit_tiny_patch16_224", pretrained=False, image_size=32, model_kwargs={"depth": 2})


def step(model, pixels: torch.Tensor, labels: torch.Tensor) -> None:
    # SGD with momentum: sharded optimizer state, and an update linear in the gradient, so the sharded step can be
    # compared to 1e-6 (Adam's first step divides by |g| and magnifies summation-order noise where g is near 0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.05)
    F.binary_cross_entropy_with_logits(model(pixel_values=pixels).logits, labels).backward()
    optimizer.step()


def one_step_reference():
    """The same step in one process on the whole batch."""
    model = tiny_model()
    step(model, *batch())
    return model


def main(output_dir: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    model = tiny_model()
    units = set(fsdp_block_classes(model))
    for module in model.modules():
        if type(module).__name__ in units:
            fully_shard(module)
    fully_shard(model)
    pixels, labels = batch()
    share = BATCH // world
    step(model, pixels[rank * share : (rank + 1) * share], labels[rank * share : (rank + 1) * share])
    # What accelerate.get_state_dict does for FSDP2: a collective, full tensors on rank 0.
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        model.save_pretrained(output_dir + "/model", state_dict=timm_state_dict(state))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
