import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import REPO
from training_helpers import ToyLinear, tiny_vit_trainer, toy_args, toy_rows

from cxr_vit.training import MultiLabelTrainer, parse_args, positive_weights
from cxr_vit.training.plots import epoch_series, plot_training_curves


def test_yaml_config_with_flags_overriding(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(
        "model_name: vit_tiny_patch16_224\npretrained: false\nlearning_rate: 1e-3\n"
        "num_train_epochs: 3\nmodel_kwargs: {depth: 2}\ndataset_name: somewhere\n"
    )
    model_args, data_args, training_args = parse_args(
        ["--config", str(config), "--num_train_epochs", "5", "--output_dir", str(tmp_path / "out")]
    )
    assert model_args.model_name == "vit_tiny_patch16_224" and model_args.pretrained is False
    assert model_args.model_kwargs == {"depth": 2}
    assert training_args.learning_rate == pytest.approx(1e-3)  # YAML's "1e-3" string converted
    assert training_args.num_train_epochs == 5  # the flag wins
    assert data_args.dataset_name == ["somewhere"]  # one name, or several sources
    assert training_args.metric_for_best_model == "auc_macro"
    assert training_args.load_best_model_at_end and training_args.lr_scheduler_type == "cosine"
    assert training_args.bf16 is False  # no GPU here


def test_dataset_name_repeated_names_several_sources_and_replaces_the_config_value(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("dataset_name: from_yaml\n")
    out = ["--output_dir", str(tmp_path / "out")]
    assert parse_args(["--config", str(config), *out])[1].dataset_name == ["from_yaml"]
    _, data_args, _ = parse_args(["--config", str(config), "--dataset_name", "a", "--dataset_name", "b", *out])
    assert data_args.dataset_name == ["a", "b"]  # the flags replace the file's value, then add to each other
    assert parse_args(["--dataset_name", "a", "b", *out])[1].dataset_name == ["a", "b"]
    assert parse_args(out)[1].dataset_name == ["data/nih_mini_prepared"]
    with pytest.raises(ValueError, match="prepares one dataset"):
        parse_args(["--dataset_name", "a", "--dataset_name", "b", "--images_dir", "i", "--labels_csv", "c", *out])


def test_run_name_defaults_to_the_output_folder_and_start_time(tmp_path):
    """The loggers' run name: the final evaluations rejoin the training run by it (trackio resumes by name)."""
    _, _, args = parse_args(["--output_dir", str(tmp_path / "quick")])
    assert re.fullmatch(r"quick-\d{8}-\d{6}", args.run_name) and args.project == "cxr-vit"
    _, _, args = parse_args(["--output_dir", str(tmp_path / "quick"), "--run_name", "mine", "--project", "p"])
    assert (args.run_name, args.project) == ("mine", "p")


def test_unknown_yaml_key_is_an_error(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("learning_rat: 1\n")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['learning_rat'\]"):
        parse_args(["--config", str(config)])


def test_unknown_flag_is_an_error(tmp_path):
    with pytest.raises(SystemExit):
        parse_args(["--output_dir", str(tmp_path), "--no_such_flag", "1"])


def test_positive_weights():
    labels = np.zeros((10, 15))
    labels[:2, 0] = 1  # 2 positives, 8 negatives -> 4
    labels[:, 1] = 1  # all positive -> clipped to 1
    labels[:1, 2] = 1  # 1 of 10 -> 9
    weights = positive_weights(labels, max_weight=5.0)
    assert weights[0] == pytest.approx(4.0)
    assert weights[1] == pytest.approx(1.0)
    assert weights[2] == pytest.approx(5.0)  # capped
    assert weights[3] == pytest.approx(1.0)  # no positives at all


class _Logits(torch.nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, pixel_values):
        from transformers.modeling_outputs import ImageClassifierOutput

        return ImageClassifierOutput(logits=self.logits)


def test_compute_loss_is_weighted_bce(tmp_path):
    from transformers import TrainingArguments

    logits = torch.randn(4, 15)
    labels = (torch.rand(4, 15) < 0.3).float()
    pos_weight = torch.linspace(1, 3, 15)
    trainer = MultiLabelTrainer(
        model=_Logits(logits), args=TrainingArguments(str(tmp_path), report_to="none"), pos_weight=pos_weight
    )
    trainer.model.eval()
    loss = trainer.compute_loss(trainer.model, {"pixel_values": torch.zeros(4), "labels": labels})
    expected = F.binary_cross_entropy_with_logits(logits, labels, pos_weight=pos_weight)
    assert loss.item() == pytest.approx(expected.item())


def test_training_curves_plot(tmp_path, monkeypatch):
    history = [
        {"epoch": 1.0, "loss": 0.7, "step": 5},
        {"epoch": 1.0, "epoch_auc_macro": 0.55, "step": 5},
        {"epoch": 1.0, "eval_loss": 0.6, "eval_auc_macro": 0.6, "step": 5},
        {"epoch": 2.0, "loss": 0.5, "epoch_auc_macro": 0.65, "step": 10},
        {"epoch": 2.0, "eval_loss": 0.55, "eval_auc_macro": 0.62, "step": 10},
    ]
    assert epoch_series(history, "eval_auc_macro") == ([1.0, 2.0], [0.6, 0.62])
    assert epoch_series(history, "loss") == ([1.0, 2.0], [0.7, 0.5])
    import matplotlib.axes

    titles, original = [], matplotlib.axes.Axes.set_title
    monkeypatch.setattr(matplotlib.axes.Axes, "set_title", lambda axis, t, **kw: titles.append(t) or original(axis, t))
    plot_training_curves(history, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 10_000
    assert titles[:2] == ["Train loss (BCE)", "Validation loss (BCE)"]
    plot_training_curves(history, tmp_path / "weighted.png", weighted_loss=True)  # --pos_weight: say so
    assert titles[4:6] == ["Train loss (BCE, positives weighted)", "Validation loss (BCE, positives weighted)"]


def test_learning_rate_and_batch_defaults(tmp_path, monkeypatch):
    from cxr_vit.training import CXRTrainingArguments
    from cxr_vit.training.config import scaled_learning_rate

    out = ["--output_dir", str(tmp_path)]
    _, _, args = parse_args(out)
    assert (args.per_device_train_batch_size, args.per_device_eval_batch_size) == (32, 64)  # CPU defaults
    assert args.learning_rate == pytest.approx(1e-4 * (32 / 256) ** 0.5)  # lr_base, sqrt-scaled to batch 32
    assert not args.logging_nan_inf_filter and not args.accelerator_config.non_blocking  # nothing pinned on a CPU
    monkeypatch.setattr(CXRTrainingArguments, "world_size", property(lambda self: 4))  # as under accelerate launch
    _, _, args = parse_args([*out, "--per_device_train_batch_size", "128", "--gradient_accumulation_steps", "2"])
    assert args.global_train_batch_size == 1024 and args.learning_rate == pytest.approx(2e-4)
    _, _, args = parse_args([*out, "--per_device_train_batch_size", "64", "--lr_base_scale", "linear"])
    assert args.learning_rate == pytest.approx(1e-4)  # 4 x 64 = 256: the base batch
    _, _, args = parse_args([*out, "--learning_rate", "3e-4"])
    assert args.learning_rate == pytest.approx(3e-4)  # a given rate is used as it is
    with pytest.raises(ValueError, match="lr_base_scale"):
        scaled_learning_rate(1e-4, 256, 512, "cube")


def test_plain_python_on_several_gpus_scales_the_rate_to_the_dataparallel_batch(tmp_path, monkeypatch, caplog):
    """One process seeing 4 GPUs (torch DataParallel) trains 4 x per_device images a step: the default rate
    follows that real global batch, and the run says accelerate launch would be faster."""
    from cxr_vit.training import CXRTrainingArguments

    monkeypatch.setattr(CXRTrainingArguments, "n_gpu", property(lambda self: 4))
    _, _, args = parse_args(["--output_dir", str(tmp_path), "--per_device_train_batch_size", "64"])
    assert args.train_batch_size == 256 and args.global_train_batch_size == 256
    assert args.learning_rate == pytest.approx(1e-4)  # lr_base is for 256: 4 GPUs x 64
    assert "4 GPUs in one process: torch DataParallel" in caplog.text and "accelerate launch --multi_gpu" in caplog.text
    _, _, args = parse_args(["--output_dir", str(tmp_path), "--per_device_train_batch_size", "16"])
    assert args.learning_rate == pytest.approx(1e-4 * (64 / 256) ** 0.5)  # sqrt rule on 4 x 16


def test_throughput_meter_times_steps_only(monkeypatch):
    from types import SimpleNamespace

    from transformers import TrainerControl, TrainerState

    from cxr_vit.training import throughput

    clock = [100.0]
    monkeypatch.setattr(throughput.time, "perf_counter", lambda: clock[0])
    meter = throughput.ThroughputMeter(skip_steps=2)
    args = SimpleNamespace(device=torch.device("cpu"), gradient_accumulation_steps=1)
    loader = type("Loader", (), {"total_batch_size": 8, "total_dataset_length": 44, "__len__": lambda self: 6})()
    control, state = TrainerControl(), TrainerState(global_step=0, max_steps=6)
    meter.on_train_begin(args, state, control, train_dataloader=loader)
    for step in range(1, 7):  # one epoch of 6 steps: 5 x 8 images and a last step of 4
        meter.on_step_begin(args, state, control)
        clock[0] += 30.0 if step == 1 else 1.0  # the first step compiles
        state.global_step = step
        control.should_evaluate = step == 4
        meter.on_step_end(args, state, control)
        if step == 4:  # the evaluation the Trainer runs after this step end: left out of the window
            clock[0] += 50.0
    meter.on_epoch_end(args, state, control)
    clock[0] += 20.0  # the epoch's evaluation and checkpoint
    meter.on_train_end(args, state, control)
    metrics = meter.metrics()
    assert metrics["train_steady_images"] == 3 * 8 + 4  # steps 3-6, the last one short
    assert metrics["train_steady_seconds"] == pytest.approx(4.0)
    assert metrics["train_steady_images_per_second"] == pytest.approx(7.0)

    short = throughput.ThroughputMeter(skip_steps=10)  # a run shorter than the skipped steps measures nothing
    short.on_train_begin(args, TrainerState(global_step=0, max_steps=3), control, train_dataloader=loader)
    assert short.metrics() == {}


@pytest.mark.slow
def test_torch_compile_trains_and_saves_plain_timm_weights(tmp_path):
    """``--torch_compile true`` through the Trainer (inductor on the CPU here): the saved weights carry timm's
    own names, not the compiled wrapper's ``_orig_mod.`` ones, and load strictly into a timm model."""
    import timm
    from conftest import TINY_IMAGE_SIZE as IMAGE_SIZE
    from safetensors.torch import load_file

    trainer = tiny_vit_trainer(
        tmp_path, cache_count=32, per_device_train_batch_size=8, max_steps=4, throughput_skip_steps=1,
        torch_compile=True,
    )  # fmt: skip
    model = trainer.model
    trainer.train()
    assert isinstance(trainer.model_wrapped, torch._dynamo.eval_frame.OptimizedModule)
    assert trainer.throughput.metrics()["train_steady_images"] == 3 * 8
    trainer.save_model()
    weights = load_file(tmp_path / "model.safetensors")
    timm_model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=15, img_size=IMAGE_SIZE)
    timm_model.load_state_dict(weights, strict=True)
    torch.testing.assert_close(weights["head.weight"], model.timm_model.head.weight.detach())


def test_steady_throughput_counts_real_images_and_leaves_out_the_epoch_end_metrics_pass(tmp_path, monkeypatch):
    import time

    args = toy_args(tmp_path, per_device_train_batch_size=4, num_train_epochs=4, save_strategy="no")
    args.logging_strategy = "epoch"
    trainer = MultiLabelTrainer(model=ToyLinear(), args=args, train_dataset=toy_rows(14), train_metrics=True)
    measured_pass = trainer.train_metrics.on_epoch_end

    def slow_pass(*pass_args, **kwargs):
        time.sleep(0.5)
        measured_pass(*pass_args, **kwargs)

    monkeypatch.setattr(trainer.train_metrics, "on_epoch_end", slow_pass)
    trainer.train()
    metrics = trainer.throughput.metrics()
    # epochs of 4 + 4 + 4 + 2 images; steps 11-16 timed: epoch 3's last two steps and all of epoch 4
    assert metrics["train_steady_images"] == (4 + 2) + (4 + 4 + 4 + 2)
    assert metrics["train_steady_seconds"] < 0.5  # three epoch ends inside the window, none timed
    history = trainer.state.log_history  # the epoch's train AUC travels with the epoch's loss log
    assert [(entry["epoch_train_images"], "loss" in entry) for entry in history if "epoch_auc_macro" in entry] == [
        (14, True)
    ] * 4


def test_train_metrics_are_opt_in_and_see_every_image_with_gradient_accumulation(tmp_path):
    args = toy_args(
        tmp_path, per_device_train_batch_size=8, gradient_accumulation_steps=2, num_train_epochs=1, save_strategy="no"
    )
    args.logging_strategy = "epoch"
    trainer = MultiLabelTrainer(model=ToyLinear(), args=args, train_dataset=toy_rows(60), train_metrics=True)
    trainer.train()
    (entry,) = [entry for entry in trainer.state.log_history if "epoch_auc_macro" in entry]
    assert entry["epoch_train_images"] == 60  # 7 full batches of 8 and one of 4, none trimmed
    plain = MultiLabelTrainer(model=ToyLinear(), args=args, train_dataset=toy_rows(60))
    assert plain.train_metrics is None and plain.train_metrics not in plain.callback_handler.callbacks
    plain.train()
    assert not any("epoch_auc_macro" in entry for entry in plain.state.log_history)


@pytest.mark.parametrize("config", sorted(path.name for path in (REPO / "configs").glob("*.yaml")))
def test_every_bundled_config_parses(tmp_path, config):
    model_args, data_args, training_args = parse_args(
        ["--config", str(REPO / "configs" / config), "--output_dir", str(tmp_path)]
    )
    if config.startswith("nih_full_official"):  # the published fine-tuning recipe
        assert (training_args.layer_decay, training_args.weight_decay, model_args.drop_path_rate) == (0.55, 0.05, 0.2)
        assert data_args.prepare_config == "full" and data_args.test_list.endswith("test_list.txt")
        assert training_args.aug_magnitude > 0 and training_args.lr_base_scale == "linear"
