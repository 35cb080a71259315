import numpy as np
import pytest
import torch
import torch.nn.functional as F

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
