"""Peak training memory per device of ViT-B/L/H at 224/448: computed for the GPU, measured on this CPU.

    python scripts/memory_table.py                      # computed table, + ViT-B at 224 measured on the CPU
    python scripts/memory_table.py --measure ""         # computed only (instant)

The computed figures count parameters and saved activations (cxr_vit.benchmarks.memory explains the count); the
measured ones are the peak resident memory of two fp32 AdamW steps in a fresh CPU process.
"""

from dataclasses import dataclass, field

from cxr_vit.arguments import parse_script_arguments
from cxr_vit.benchmarks.memory import computed_peak_bytes, measured_cpu_peak_bytes, vit_shape

GB = 2**30


@dataclass
class MemoryTableArguments:
    models: str = field(
        default="vit_base_patch16_224,vit_large_patch16_224,vit_huge_patch14_224", metadata={"help": "timm ViTs."}
    )
    sizes: str = field(default="224,448", metadata={"help": "Input sizes."})
    gpu_batch_size: int = field(default=32, metadata={"help": "Images per GPU in the computed table."})
    gpus: int = field(default=8, metadata={"help": "GPUs the FSDP columns shard over."})
    measure: str = field(
        default="vit_base_patch16_224@224", metadata={"help": "model@size pairs to measure on the CPU; empty: none."}
    )
    cpu_batch_size: int = field(default=8, metadata={"help": "Images per step in the CPU measurement."})


def main(args: MemoryTableArguments) -> None:
    columns = [(False, False), (False, True), (True, False), (True, True)]
    print(f"Computed, bf16 autocast, AdamW, {args.gpu_batch_size} images per GPU, GiB per GPU "
          f"(FSDP: full shard over {args.gpus} GPUs; AC: activation checkpointing):\n")  # fmt: skip
    print("| model | input | parameters | plain | AC | FSDP | FSDP + AC |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for model in args.models.split(","):
        for size in (int(s) for s in args.sizes.split(",")):
            shape = vit_shape(model, size)
            cells = [
                computed_peak_bytes(shape, args.gpu_batch_size, args.gpus, fsdp=fsdp, checkpointing=ac) / GB
                for fsdp, ac in columns
            ]
            figures = " | ".join(f"{cell:.1f}" for cell in cells)
            print(f"| {model} | {size} | {shape.parameters / 1e6:.0f}M | {figures} |")
    pairs = [pair.split("@") for pair in args.measure.split(",") if pair]
    if not pairs:
        return
    print(f"\nCPU, fp32, AdamW, {args.cpu_batch_size} images per step, GiB: measured peak resident memory, computed\n")
    print("| model | input | AC | measured | computed |")
    print("|---|---:|---|---:|---:|")
    for model, size in pairs:
        shape = vit_shape(model, int(size))
        for ac in (False, True):
            measured = measured_cpu_peak_bytes(model, int(size), args.cpu_batch_size, ac) / GB
            computed = computed_peak_bytes(shape, args.cpu_batch_size, checkpointing=ac, bf16=False) / GB
            print(f"| {model} | {size} | {'yes' if ac else 'no'} | {measured:.2f} | {computed:.2f} |")


if __name__ == "__main__":
    (memory_args,) = parse_script_arguments(MemoryTableArguments)
    main(memory_args)
