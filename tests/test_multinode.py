"""Beyond one process: two "nodes" on loopback, a kill and resume across them, the launch check, sharding,
activation checkpointing and the SLURM example (docs/training.md, "More than one machine")."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO

from cxr_vit.training import CXRTrainingArguments
from cxr_vit.training.checkpoints import checkpoint_problem, find_resumable_checkpoint
from cxr_vit.training.distributed import LaunchError, check_process_count, configure_fsdp, fsdp_block_classes

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
PER_NODE_BATCH, TRAIN_IMAGES, EPOCHS = 16, 128, 4
STEPS_PER_EPOCH = TRAIN_IMAGES // (2 * PER_NODE_BATCH)  # two nodes, one process each: a global batch of 32


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def kill_tree(pid: int) -> None:
    """SIGKILL a launcher and everything under it: torchrun starts its workers in their own sessions."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended while we looked
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, queue = [], [pid]
    while queue:
        tree.append(queue.pop())
        queue.extend(parents.get(tree[-1], []))
    for member in tree:
        try:
            os.kill(member, signal.SIGKILL)
        except ProcessLookupError:
            pass


def tiny_run_config(tmp_path: Path, dataset: Path) -> Path:
    """A ViT with 2 blocks at 32 px on 128 real training films: 4 steps of 32 per epoch."""
    config = dict(
        dataset_name=str(dataset), model_name="vit_tiny_patch16_224", pretrained=False, image_size=32,
        model_kwargs={"depth": 2}, drop_path_rate=0.0, num_train_epochs=EPOCHS, max_train_samples=TRAIN_IMAGES,
        per_device_train_batch_size=PER_NODE_BATCH, per_device_eval_batch_size=64, learning_rate=5e-4,
        test_split="none", report_to="none", use_cpu=True, save_total_limit=EPOCHS, seed=0,
    )  # fmt: skip
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def start_nodes(tmp_path: Path, config: Path, output_dir: Path, tag: str, *extra: str) -> list[subprocess.Popen]:
    """Two torchrun launchers (--nnodes 2, one process each) meeting at a c10d rendezvous on loopback, as on two
    machines: the prepared folder is shared, each node builds its image cache under its own --image_cache_dir."""
    port = free_port()
    nodes = []
    for rank in (0, 1):
        command = [
            sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
            "--node_rank", str(rank), "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}",
            "--rdzv_id", f"cxr-{port}", "scripts/train.py", "--config", str(config), "--output_dir", str(output_dir),
            "--image_cache_dir", str(tmp_path / f"node{rank}" / "cache"), *extra,
        ]  # fmt: skip
        with open(tmp_path / f"{tag}-node{rank}.log", "w") as log:
            node = subprocess.Popen(command, cwd=REPO, env=ENV, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)  # fmt: skip
        node.log_path = Path(log.name)
        nodes.append(node)
    return nodes


def wait_all(nodes: list[subprocess.Popen], timeout: float = 240) -> list[str]:
    for node in nodes:
        node.wait(timeout=timeout)
    logs = [node.log_path.read_text() for node in nodes]
    for node, log in zip(nodes, logs, strict=True):
        assert node.returncode == 0, log[-3000:]
    return logs


@pytest.fixture(scope="module")
def two_node_run(tmp_path_factory, prepared_mini) -> dict:
    """One run over two nodes: node 1 (launcher and worker) killed after the first checkpoint, then both restarted
    with --resume_from_checkpoint auto, as after a node failure on a cluster."""
    tmp_path = tmp_path_factory.mktemp("two_nodes")
    config = tiny_run_config(tmp_path, prepared_mini)
    output = tmp_path / "run"
    nodes = start_nodes(tmp_path, config, output, "killed")
    first = output / f"checkpoint-{STEPS_PER_EPOCH}"
    deadline = time.monotonic() + 240
    while checkpoint_problem(first) is not None and time.monotonic() < deadline:
        assert all(node.poll() is None for node in nodes), "a node ended before its first checkpoint"
        time.sleep(0.05)
    kill_tree(nodes[1].pid)
    nodes[1].wait()
    try:  # node 0 loses its peer (in a collective, or the rendezvous store) and must stop by itself, not hang
        nodes[0].wait(timeout=120)
    except subprocess.TimeoutExpired:
        kill_tree(nodes[0].pid)
        pytest.fail("node 0 was still running 120 s after node 1 was killed:\n" + nodes[0].log_path.read_text()[-3000:])
    killed = {"node0_returncode": nodes[0].returncode, "resumable": find_resumable_checkpoint(output),
              "finished": (output / f"checkpoint-{STEPS_PER_EPOCH * EPOCHS}").exists()}  # fmt: skip
    logs = wait_all(start_nodes(tmp_path, config, output, "resumed", "--resume_from_checkpoint", "auto"))
    return {"tmp_path": tmp_path, "output": output, "killed": killed, "logs": logs}


@pytest.mark.slow
def test_killing_one_node_then_restarting_both_resumes(two_node_run):
    killed = two_node_run["killed"]
    assert killed["node0_returncode"] != 0, "node 0 finished a run that lost a node"
    assert killed["resumable"] is not None and not killed["finished"], "the kill must land between checkpoints"
    assert f"resume: {killed['resumable']}" in two_node_run["logs"][0]
    assert (two_node_run["output"] / "model.safetensors").is_file()


@pytest.mark.slow
def test_two_nodes_train_one_run_with_the_global_batch(two_node_run):
    assert "batch 16 per device, 32 global" in two_node_run["logs"][0]
    state = json.loads((two_node_run["output"] / "trainer_state.json").read_text())
    assert state["global_step"] == STEPS_PER_EPOCH * EPOCHS == 16
    assert state["train_batch_size"] == PER_NODE_BATCH
    for rank in (0, 1):  # each node built its own cache, in its own folder
        assert list((two_node_run["tmp_path"] / f"node{rank}" / "cache").iterdir()), f"node {rank} has no cache"


@pytest.mark.slow
def test_metrics_gathered_on_rank_0_equal_one_process_on_the_saved_model(two_node_run, prepared_mini):
    from launch.distributed_eval import main as evaluate_saved_model

    output = two_node_run["output"]
    gathered = json.loads((output / "eval_results.json").read_text())
    single = two_node_run["tmp_path"] / "single.json"
    evaluate_saved_model(str(output), str(prepared_mini), str(single))  # the datasets pipeline, one process
    single = json.loads(single.read_text())
    assert single["world_size"] == 1
    compared = [key for key in single if "auc" in key or "auprc" in key or key == "eval_bce"]
    assert len(compared) == 15 + 3 + 1 + 1
    for key in compared:
        assert gathered[key] == pytest.approx(single[key], abs=1e-6), key


@pytest.mark.slow
def test_two_launches_on_one_node_share_its_cache_folder(tmp_path, prepared_mini):
    """Two runs started at once on one node with the same --image_cache_dir: one builds, the other waits and reuses."""
    config = tiny_run_config(tmp_path, prepared_mini)
    short = ["--max_steps", "1", "--eval_strategy", "no", "--save_strategy", "no", "--load_best_model_at_end", "false",
             "--image_cache_dir", str(tmp_path / "cache")]  # fmt: skip
    runs = []
    for index in (0, 1):
        output = str(tmp_path / f"run{index}")
        command = [sys.executable, "scripts/train.py", "--config", str(config), "--output_dir", output, *short]
        runs.append(subprocess.Popen(command, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True))  # fmt: skip
    logs = [run.communicate(timeout=300)[0] for run in runs]
    for run, log in zip(runs, logs, strict=True):
        assert run.returncode == 0, log[-3000:]
    # train and validation built once each ("building the image cache DIR (N images at P px)"); the other run's
    # "waiting: another process is building the image cache ..." lines, where it came first, are not builds
    built = re.compile(r"building the image cache \S+ \(\d+ images at \d+ px\)")
    assert sum(len(built.findall(log)) for log in logs) == 2, logs
    assert not list((tmp_path / "cache").glob("*.tmp-*")), "a staging folder was left behind"


# ---- the launch check ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_accelerate_cpu_launch_of_two_processes_is_stopped_with_the_fix(tmp_path):
    command = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2",
               "scripts/train.py", "--output_dir", str(tmp_path)]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "started one process" in result.stderr and "torchrun --nnodes M --nproc_per_node N" in result.stderr
    assert not list(tmp_path.iterdir()), "nothing may be trained or written"


@pytest.mark.parametrize(
    ("environ", "world_size", "message"),
    [
        ({"WORLD_SIZE": "2"}, 1, "started 2 processes"),
        ({"ACCELERATE_USE_CPU": "True", "MASTER_ADDR": "127.0.0.1"}, 1, "started one process"),
        ({"WORLD_SIZE": "2"}, 2, None),
        ({"ACCELERATE_USE_CPU": "True"}, 1, None),  # accelerate launch of one process
        ({}, 1, None),  # python scripts/train.py
    ],
)
def test_process_count_check(environ, world_size, message):
    if message is None:
        check_process_count(world_size, environ)
    else:
        with pytest.raises(LaunchError, match=message):
            check_process_count(world_size, environ)


# ---- sharding ------------------------------------------------------------------------------------------------


def test_fsdp_is_refused_on_the_cpu_with_the_reason(tmp_path):
    with pytest.raises(ValueError, match="--fsdp needs GPUs: accelerate keeps its FSDP plugin only"):
        CXRTrainingArguments(output_dir=str(tmp_path), use_cpu=True, fsdp=True, report_to="none")


def test_fsdp_wraps_the_timm_blocks_by_default():
    from types import SimpleNamespace

    from cxr_vit.modeling import create_model

    model = create_model("vit_tiny_patch16_224", pretrained=False, image_size=32, model_kwargs={"depth": 2})
    assert fsdp_block_classes(model) == ["Block"]
    args = SimpleNamespace(fsdp=True, fsdp_plugin_args={"auto_wrap_policy": "TRANSFORMER_BASED_WRAP"})
    configure_fsdp(args, model)
    assert args.fsdp_plugin_args["transformer_cls_names_to_wrap"] == "Block"
    named = SimpleNamespace(fsdp=True, fsdp_plugin_args={"auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
                                                         "transformer_cls_names_to_wrap": "Attention"})  # fmt: skip
    configure_fsdp(named, model)
    assert named.fsdp_plugin_args["transformer_cls_names_to_wrap"] == "Attention"  # fsdp_config's choice wins
    with pytest.raises(ValueError, match="no blocks.N modules"):
        fsdp_block_classes(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("as_file", [False, True])
def test_fsdp_defaults_reach_the_accelerate_plugin_under_the_given_config(tmp_path, monkeypatch, as_file):
    """--fsdp on a GPU, up to the plugin arguments the Trainer hands accelerate (no GPU here to build the Trainer)."""
    from types import SimpleNamespace

    from transformers import TrainingArguments

    from cxr_vit.modeling import create_model

    monkeypatch.setenv("FSDP_CPU_RAM_EFFICIENT_LOADING", "false")  # _process_fsdp_args sets it; restored after
    given = {"fsdp_state_dict_type": "FULL_STATE_DICT", "activation_checkpointing": True}
    if as_file:
        (tmp_path / "fsdp.json").write_text(json.dumps(given))
    args = SimpleNamespace(fsdp=True, ema_decay=None, activation_checkpointing=False, gradient_checkpointing=False,
                           fsdp_config=str(tmp_path / "fsdp.json") if as_file else given)  # fmt: skip
    CXRTrainingArguments._resolve_fsdp(args, on_gpu=True)
    args.fsdp_plugin_args = TrainingArguments._process_fsdp_args(args)
    configure_fsdp(args, create_model("vit_tiny_patch16_224", pretrained=False, image_size=32))
    plugin = args.fsdp_plugin_args
    assert plugin["fsdp_version"] == 2 and plugin["auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert plugin["transformer_cls_names_to_wrap"] == "Block"
    assert plugin["state_dict_type"] == "FULL_STATE_DICT" and plugin["activation_checkpointing"] is True
    args.fsdp_config = None  # and the defaults alone: sharded checkpoints
    CXRTrainingArguments._resolve_fsdp(args, on_gpu=True)
    assert TrainingArguments._process_fsdp_args(args)["state_dict_type"] == "SHARDED_STATE_DICT"
    with pytest.raises(ValueError, match="--ema_decay"):
        CXRTrainingArguments._resolve_fsdp(SimpleNamespace(ema_decay=0.999, fsdp_config=None), on_gpu=True)


def test_sharded_checkpoint_is_resumable_once_both_shard_folders_are_complete(tmp_path):
    path = tmp_path / "checkpoint-8"
    for folder in ("pytorch_model_fsdp_0", "optimizer_0"):
        (path / folder).mkdir(parents=True)
        (path / folder / "__0_0.distcp").write_bytes(b"x")
    (path / "scheduler.pt").write_bytes(b"x")
    (path / "rng_state_0.pth").write_bytes(b"x")
    (path / "trainer_state.json").write_text(json.dumps({"global_step": 8}))
    assert "pytorch_model_fsdp_0/.metadata is missing" in checkpoint_problem(path)  # killed while writing shards
    (path / "pytorch_model_fsdp_0" / ".metadata").write_bytes(b"x")
    assert "optimizer_0/.metadata is missing" in checkpoint_problem(path)
    (path / "optimizer_0" / ".metadata").write_bytes(b"x")
    assert checkpoint_problem(path) is None


def test_fsdp_full_state_checkpoint_with_its_optimizer_bin_is_resumable(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "checkpoint-8"
    path.mkdir()
    save_file({"w": torch.zeros(2)}, str(path / "model.safetensors"))
    for name in ("config.json", "scheduler.pt", "rng_state_0.pth"):
        (path / name).write_bytes(b"x")
    (path / "trainer_state.json").write_text(json.dumps({"global_step": 8}))
    assert "optimizer.pt is missing" in checkpoint_problem(path)
    (path / "optimizer.bin").write_bytes(b"")
    assert "optimizer.bin is missing or empty" in checkpoint_problem(path)
    (path / "optimizer.bin").write_bytes(b"x")
    assert checkpoint_problem(path) is None


@pytest.mark.slow
def test_fsdp2_on_cpu_trains_like_one_process_and_saves_one_plain_file(tmp_path):
    """torch's own FSDP2 (fully_shard) over gloo, two processes, the timm blocks as units: the step equals the
    unsharded one, and the gathered state dict saves as a folder stock transformers loads."""
    output = tmp_path / "fsdp"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(free_port()), "tests/launch/fsdp_step.py", str(output)]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    from launch.fsdp_step import one_step_reference
    from transformers import AutoModelForImageClassification

    reference = one_step_reference()
    saved = AutoModelForImageClassification.from_pretrained(output / "model")
    assert sorted(os.listdir(output / "model")) == ["config.json", "model.safetensors"]
    for name, tensor in reference.state_dict().items():
        torch.testing.assert_close(saved.state_dict()[name], tensor, rtol=0, atol=1e-6, msg=name)


# ---- activation checkpointing --------------------------------------------------------------------------------


def saved_activation_bytes_and_grads(checkpointing: bool) -> tuple[int, dict[str, torch.Tensor]]:
    """One training forward/backward of a 4-block ViT with the Trainer's switch; bytes saved for backward."""
    from cxr_vit.modeling import create_model

    torch.manual_seed(0)
    model = create_model("vit_tiny_patch16_224", pretrained=False, image_size=64, model_kwargs={"depth": 4})
    if checkpointing:
        # what --gradient_checkpointing makes the Trainer call (gradient_checkpointing_enable before transformers 5.2x)
        enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        enable()
    model.train()
    pixels = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    saved = []

    def pack(tensor):
        saved.append(tensor.numel() * tensor.element_size())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        logits = model(pixel_values=pixels).logits
    forward_bytes = sum(saved)
    logits.square().mean().backward()
    return forward_bytes, {name: p.grad.clone() for name, p in model.named_parameters()}


def test_gradient_checkpointing_reaches_the_timm_blocks_and_keeps_the_gradients():
    plain_bytes, plain_grads = saved_activation_bytes_and_grads(False)
    checkpointed_bytes, checkpointed_grads = saved_activation_bytes_and_grads(True)
    assert checkpointed_bytes < plain_bytes / 3  # only each block's input is kept, the rest is recomputed
    for name, grad in plain_grads.items():
        torch.testing.assert_close(checkpointed_grads[name], grad, rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.parametrize("bf16", [False, True])
def test_the_memory_count_is_what_a_timm_block_saves_for_backward(bf16):
    """docs/training.md's computed memory table rests on this count (cxr_vit.benchmarks.memory)."""
    import timm

    from cxr_vit.benchmarks.memory import block_activation_bytes, vit_shape

    shape = vit_shape("vit_small_patch16_224", 64)
    block = timm.create_model("vit_small_patch16_224", pretrained=False, img_size=64, depth=1).blocks[0].train()
    parameters = {p.data_ptr() for p in block.parameters()}
    saved = []

    def pack(tensor):
        if tensor.data_ptr() not in parameters:
            saved.append(tensor.numel() * tensor.element_size())
        return tensor

    tokens = torch.randn(2, shape.tokens, shape.width, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", enabled=bf16):
        block(tokens)
    weight_copies = 2 * sum(p.numel() for p in block.parameters() if p.dim() == 2) if bf16 else 0
    expected = 2 * block_activation_bytes(shape, 2 if bf16 else 4) + weight_copies
    assert sum(saved) == pytest.approx(expected, rel=0.01)  # the rest: LayerNorm statistics, attention's logsumexp


# ---- the SLURM example -----------------------------------------------------------------------------------------

SBATCH = REPO / "examples" / "slurm" / "train.sbatch"


def test_slurm_script_parses():
    result = subprocess.run(["bash", "-n", str(SBATCH)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed (apt-get install shellcheck)")
def test_slurm_script_passes_shellcheck():
    result = subprocess.run(["shellcheck", str(SBATCH)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
