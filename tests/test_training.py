import numpy as np
import pytest
import torch
import torch.nn.functional as F
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
    assert data_args.dataset_name == "somewhere"
    assert training_args.metric_for_best_model == "auc_macro"
    assert training_args.load_best_model_at_end and training_args.lr_scheduler_type == "cosine"
    assert training_args.bf16 is False  # no GPU here


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


def test_training_curves_plot(tmp_path):
    history = [
        {"epoch": 1.0, "epoch_loss": 0.7, "epoch_auc_macro": 0.55, "step": 5},
        {"epoch": 1.0, "eval_loss": 0.6, "eval_auc_macro": 0.6, "step": 5},
        {"epoch": 2.0, "epoch_loss": 0.5, "epoch_auc_macro": 0.65, "step": 10},
        {"epoch": 2.0, "eval_loss": 0.55, "eval_auc_macro": 0.62, "step": 10},
    ]
    assert epoch_series(history, "eval_auc_macro") == ([1.0, 2.0], [0.6, 0.62])
    plot_training_curves(history, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 10_000


def test_learning_rate_and_batch_defaults(tmp_path, monkeypatch):
    from cxr_vit.training.config import scaled_learning_rate

    out = ["--output_dir", str(tmp_path)]
    _, _, args = parse_args(out)
    assert (args.per_device_train_batch_size, args.per_device_eval_batch_size) == (32, 64)  # CPU defaults
    assert args.learning_rate == pytest.approx(1e-4 * (32 / 256) ** 0.5)  # lr_base, sqrt-scaled to batch 32
    assert not args.logging_nan_inf_filter and not args.accelerator_config.non_blocking  # nothing pinned on a CPU
    monkeypatch.setenv("WORLD_SIZE", "4")
    _, _, args = parse_args([*out, "--per_device_train_batch_size", "128", "--gradient_accumulation_steps", "2"])
    assert args.global_train_batch_size == 1024 and args.learning_rate == pytest.approx(2e-4)
    _, _, args = parse_args([*out, "--per_device_train_batch_size", "64", "--lr_base_scale", "linear"])
    assert args.learning_rate == pytest.approx(1e-4)  # 4 x 64 = 256: the base batch
    _, _, args = parse_args([*out, "--learning_rate", "3e-4"])
    assert args.learning_rate == pytest.approx(3e-4)  # a given rate is used as it is
    with pytest.raises(ValueError, match="lr_base_scale"):
        scaled_learning_rate(1e-4, 256, 512, "cube")


def test_throughput_meter_times_steps_only(monkeypatch):
    from types import SimpleNamespace

    from transformers import TrainerControl, TrainerState

    from cxr_vit.training import throughput

    clock = [100.0]
    monkeypatch.setattr(throughput.time, "perf_counter", lambda: clock[0])
    meter = throughput.ThroughputMeter(skip_steps=2)
    args, control = SimpleNamespace(device=torch.device("cpu")), TrainerControl()
    state = TrainerState(global_step=0, max_steps=6)
    meter.on_train_begin(args, state, control)
    for step in range(1, 7):
        meter.count(8)
        clock[0] += 30.0 if step == 1 else 1.0  # the first step compiles
        if step == 4:
            with meter.excluded():  # an evaluation: left out of the window
                clock[0] += 50.0
        state.global_step = step
        meter.on_step_end(args, state, control)
    meter.on_epoch_end(args, state, control)
    metrics = meter.metrics()
    assert metrics["train_steady_images"] == 4 * 8  # steps 3-6
    assert metrics["train_steady_seconds"] == pytest.approx(4.0)
    assert metrics["train_steady_images_per_second"] == pytest.approx(8.0)

    short = throughput.ThroughputMeter(skip_steps=10)  # a run shorter than the skipped steps measures nothing
    short.on_train_begin(args, TrainerState(global_step=0, max_steps=3), control)
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


def test_steady_throughput_leaves_out_the_epoch_end_metrics_pass(tmp_path, monkeypatch):
    import time

    args = toy_args(tmp_path, per_device_train_batch_size=4, max_steps=16, save_strategy="no")
    trainer = MultiLabelTrainer(model=ToyLinear(), args=args, train_dataset=toy_rows(16))
    measured_pass = trainer.log_epoch_train_metrics

    def slow_pass():
        time.sleep(0.5)
        measured_pass()

    monkeypatch.setattr(trainer, "log_epoch_train_metrics", slow_pass)
    trainer.train()
    metrics = trainer.throughput.metrics()
    assert metrics["train_steady_images"] == 6 * 4  # steps 11-16
    assert metrics["train_steady_seconds"] < 0.5  # two epoch ends (steps 12, 16) inside the window, not timed


def test_train_drop_last_drops_only_the_short_training_batch(tmp_path):
    from cxr_vit.training import CXRTrainingArguments

    _, _, args = parse_args(["--output_dir", str(tmp_path)])
    assert args.train_drop_last is False  # on only with --torch_compile by default
    _, _, args = parse_args(["--output_dir", str(tmp_path), "--torch_compile", "true"])
    assert args.train_drop_last is True
    args = CXRTrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=4, per_device_eval_batch_size=4, train_drop_last=True,
        eval_strategy="no", save_strategy="no", load_best_model_at_end=False, report_to="none", use_cpu=True,
    )  # fmt: skip
    trainer = MultiLabelTrainer(model=ToyLinear(), args=args, train_dataset=toy_rows(10))
    assert len(trainer.get_train_dataloader()) == 2  # 4 + 4; the last 2 images wait for the next epoch's shuffle
    assert len(trainer.get_eval_dataloader(toy_rows(10))) == 3 and not args.dataloader_drop_last  # eval sees all


def test_epoch_train_metrics_see_every_image_with_gradient_accumulation(tmp_path, monkeypatch):
    args = toy_args(
        tmp_path, per_device_train_batch_size=8, gradient_accumulation_steps=2, num_train_epochs=1, save_strategy="no"
    )
    trainer = MultiLabelTrainer(model=ToyLinear(), args=args, train_dataset=toy_rows(60))
    seen = []
    measured_pass = trainer.log_epoch_train_metrics

    def counting_pass():
        seen.append(sum(len(labels) for labels in trainer._epoch_labels))
        measured_pass()

    monkeypatch.setattr(trainer, "log_epoch_train_metrics", counting_pass)
    trainer.train()
    assert seen == [60]  # 7 full batches of 8 and one of 4, none trimmed
