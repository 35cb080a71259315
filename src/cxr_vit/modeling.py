"""The timm ViT as a transformers ``PreTrainedModel`` with a 15-way multi-label head.

We build on transformers' own ``TimmWrapperForImageClassification`` (model type ``timm_wrapper``), so a saved
model loads with stock ``AutoModelForImageClassification.from_pretrained`` and
``pipeline("image-classification")`` without ``trust_remote_code``, and its ``config.json`` carries timm's
``pretrained_cfg``, from which ``AutoImageProcessor`` rebuilds the eval transform.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
from transformers import (
    AutoModelForImageClassification,
    TimmWrapperConfig,
    TimmWrapperForImageClassification,
)

from .constants import DEFAULT_MODEL_NAME, ID2LABEL, LABEL2ID, NUM_LABELS
from .encoders import FORMATS, EncoderSource, convert_checkpoint, is_hub_id, resolve_source
from .encoders.sources import hub_config
from .pretrained import CheckpointLoadError, load_backbone_checkpoint, read_state_dict

logger = logging.getLogger(__name__)
FORMAT_NORMALIZATION = {fmt.name: fmt.normalization for fmt in FORMATS if fmt.normalization}


@dataclass
class ModelArguments:
    """Which backbone to fine-tune and how to build it."""

    model_name: str = field(
        default=DEFAULT_MODEL_NAME,
        metadata={
            "help": "A timm architecture with an optional pretrained tag (e.g. vit_base_patch16_224."
            "augreg2_in21k_ft_in1k), a folder / Hub id of a model saved by cxr-vit to fine-tune further, or a "
            "file / folder / Hub id of an encoder checkpoint whose architecture it names (e.g. microsoft/rad-dino)."
        },
    )
    pretrained: bool = field(
        default=True,
        metadata={
            "help": "Start from the tag's ImageNet weights (downloaded by timm from the Hub). "
            "--pretrained false starts from random weights, e.g. offline."
        },
    )
    image_size: int | None = field(
        default=None,
        metadata={
            "help": "Input resolution; default: the backbone's (224). 384-512 helps small "
            "findings such as Nodule; position embeddings are resampled."
        },
    )
    drop_path_rate: float = field(default=0.1, metadata={"help": "Stochastic depth rate of the backbone."})
    pretrained_weights: str | None = field(
        default=None,
        metadata={
            "help": "A research checkpoint to initialise the backbone from, instead of the tag's ImageNet weights: a "
            ".pth/.pt/.bin/.safetensors file (the state dict at the top level or under model/state_dict/module), a "
            "folder or a Hub repo id; timm, MAE, EVA-X, transformers Dinov2Model, open_clip and OpenAI-CLIP layouts."
        },
    )
    allow_resampled_weights: bool = field(
        default=False,
        metadata={
            "help": "Let --pretrained_weights load tensors resampled to another shape than the checkpoint's (e.g. a "
            "16-px patch embedding to a 14-px model): the backbone then does not compute the checkpoint's function, "
            "so by default the run stops. Position embeddings interpolated to another --image_size are always allowed."
        },
    )
    model_kwargs: dict[str, Any] | None = field(
        default=None, metadata={"help": 'Extra timm.create_model keywords, e.g. {"depth": 4} (YAML config).'}
    )


class PretrainedWeightsUnavailable(RuntimeError):
    """Pretrained weights were asked for and cannot be had; we never fall back to random weights silently."""


def _is_saved_model(name: str) -> bool:
    return (Path(name) / "config.json").is_file() or ("/" in name and not name.startswith(("hf-hub:", "timm/")))


def _is_cxr_vit_model(name: str) -> bool:
    """A folder / Hub repo of a ``timm_wrapper`` model (ours), not another library's encoder checkpoint."""
    if Path(name).is_file():
        return False
    config = hub_config(name)
    return config is not None and config.get("model_type") == "timm_wrapper"


def encoder_architecture(source: EncoderSource) -> tuple[str, dict[str, Any]]:
    """The timm architecture and keywords of an encoder checkpoint, read from its config file or its tensors."""
    found = read_state_dict(source.weights)[0]
    converted, fmt = convert_checkpoint(found)
    try:
        return fmt.architecture(converted, source.configs.get(fmt.config_file), found)
    except (KeyError, ValueError) as err:
        raise CheckpointLoadError(f"{source.origin} ({fmt.description}): {err}") from err


def create_model(
    model_name: str = DEFAULT_MODEL_NAME,
    pretrained: bool = True,
    image_size: int | None = None,
    drop_path_rate: float = 0.0,
    model_kwargs: dict[str, Any] | None = None,
    pretrained_weights: str | os.PathLike | None = None,
    allow_resampled_weights: bool = False,
) -> TimmWrapperForImageClassification:
    """A ``TimmWrapperForImageClassification`` with the 15 NIH labels, ``problem_type`` multi-label.

    Args:
        model_name: timm architecture (``.tag`` optional; ViT, DeiT, Swin, ConvNeXt, EVA, ... anything timm
            builds), ``hf-hub:org/name`` or ``timm/name`` for a timm repo on the Hub, a saved cxr-vit model
            folder / Hub id, or an encoder checkpoint (file, folder, Hub id) whose timm architecture is read from
            its config or tensors (:mod:`cxr_vit.encoders`).
        pretrained: load the tag's ImageNet weights through timm; raises if they cannot be fetched (never a
            silent random init). ``False`` is an explicit random init.
        image_size: square input size; position embeddings of pretrained weights are resampled by timm.
            Convolutional backbones take any size and keep it in the data config only.
        drop_path_rate: stochastic depth of the backbone.
        model_kwargs: more ``timm.create_model`` keywords (they are stored in ``config.model_args``).
        pretrained_weights: a checkpoint file, folder or Hub repo id loaded into the backbone instead of the
            tag's weights, in any layout of :mod:`cxr_vit.encoders`
            (:func:`cxr_vit.pretrained.load_backbone_checkpoint`: safe loading, position embeddings resampled,
            another head dropped, an error when it leaves more than a few backbone tensors unloaded).
        allow_resampled_weights: load checkpoint tensors resampled to another shape than the position grid
            (otherwise :class:`cxr_vit.pretrained.CheckpointResampledError`).
    """
    encoder_args: dict[str, Any] = {}
    source: EncoderSource | None = None
    if _is_saved_model(model_name) or Path(model_name).is_file():
        if _is_cxr_vit_model(model_name):
            if pretrained_weights:
                raise ValueError(f"--pretrained_weights initialises a new backbone, not the saved model {model_name!r}")
            return AutoModelForImageClassification.from_pretrained(model_name)
        if pretrained_weights:
            raise ValueError(f"--model_name {model_name!r} is an encoder checkpoint; give it or --pretrained_weights")
        source = resolve_source(model_name)
        model_name, encoder_args = encoder_architecture(source)
        logger.info("encoder %s: timm architecture %s %s", source.origin, model_name, encoder_args)
    elif pretrained_weights:
        source = resolve_source(str(pretrained_weights))
    if source is not None:
        pretrained = False  # the file's weights replace the tag's: nothing to download
    if model_name.startswith("timm/"):  # a timm Hub repo id: timm loads it through its hf-hub: prefix
        model_name = "hf-hub:" + model_name
    model_args = {**encoder_args, **(model_kwargs or {})}
    if drop_path_rate:
        model_args["drop_path_rate"] = drop_path_rate
    if image_size:
        model_args["img_size"] = image_size
    # timm fetches the weights (and resamples position embeddings for another image size, and drops the
    # 1000-class head) far better than a state-dict copy could; we then move them into the wrapper.
    try:
        try:
            backbone = timm.create_model(model_name, pretrained=pretrained, num_classes=NUM_LABELS, **model_args)
        except TypeError as err:  # convolutional backbones (ConvNeXt, ResNet) take any size and no img_size
            if "img_size" not in str(err) or not image_size:
                raise
            del model_args["img_size"]
            backbone = timm.create_model(model_name, pretrained=pretrained, num_classes=NUM_LABELS, **model_args)
    except OSError as err:  # huggingface_hub's download errors are OSErrors
        if not pretrained:
            raise
        raise PretrainedWeightsUnavailable(
            f"could not fetch the pretrained weights of {model_name!r} from the Hugging Face Hub: {err}\n"
            "Check the network / HF_ENDPOINT / HF_HUB_OFFLINE, or pass --pretrained false to train from random "
            "weights on purpose."
        ) from err
    pretrained_cfg = {k: v for k, v in backbone.pretrained_cfg.items() if k != "num_classes"}
    size = image_size or model_args.get("img_size")  # also an encoder's own size (e.g. its config.json's)
    if isinstance(size, int):
        pretrained_cfg["input_size"] = (3, size, size)
    config = TimmWrapperConfig(
        architecture=pretrained_cfg.get("architecture", model_name.split(".")[0]),
        num_labels=NUM_LABELS,
        id2label=dict(ID2LABEL),
        label2id=dict(LABEL2ID),
        problem_type="multi_label_classification",
        model_args=model_args or None,
        pretrained_cfg=pretrained_cfg,
    )
    model = TimmWrapperForImageClassification(config)
    model.timm_model.load_state_dict(backbone.state_dict())
    if source is not None:
        result = load_backbone_checkpoint(model.timm_model, source.weights, allow_resampled=allow_resampled_weights)
        logger.info("initialised the backbone from %s", result.summary())
        # the encoder's own normalization, not ImageNet's: from its files, else the one its format was tuned with;
        # one given in model_kwargs (pretrained_cfg_overlay, as the recipe configs do) stays
        normalization = source.normalization() or FORMAT_NORMALIZATION.get(result.format)
        if normalization and "mean" not in (model_args.get("pretrained_cfg_overlay") or {}):
            model.config.pretrained_cfg["mean"], model.config.pretrained_cfg["std"] = (tuple(v) for v in normalization)
        origin = source.origin
        model.config.cxr_vit_initialization = {
            "checkpoint": origin if is_hub_id(origin) else Path(origin).name,
            "format": result.format,
            "format_description": result.format_description,
            "tensors_loaded": len(result.loaded),
            "missing": result.missing,
            "resampled": result.resampled,
            "reshaped": result.reshaped,
            "lossy": result.lossy,
        }
    return model


def timm_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Weights under timm's own names (without the wrapper's ``timm_model.`` prefix).

    Saved this way, one folder loads in both libraries: transformers' ``TimmWrapper`` adds the prefix back
    on load, and ``timm.create_model("hf-hub:<id>", pretrained=True)`` reads it as a timm checkpoint.
    """
    prefix = TimmWrapperForImageClassification.base_model_prefix + "."
    return {key.removeprefix(prefix): value for key, value in state_dict.items()}


def save_model(model: TimmWrapperForImageClassification, save_directory: str | os.PathLike) -> None:
    """``save_pretrained`` (safetensors + config.json with ``pretrained_cfg``) with timm-named weights."""
    model.save_pretrained(save_directory, state_dict=timm_state_dict(model.state_dict()))


def data_config(model: TimmWrapperForImageClassification) -> dict[str, Any]:
    """timm's resolved data config (input_size, mean, std, interpolation, crop_pct) of the model."""
    return timm.data.resolve_data_config(dict(model.config.pretrained_cfg), model=None, verbose=False)
