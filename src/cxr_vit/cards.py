"""Render dataset and model cards from the Jinja templates in ``dataset_card/`` and ``model_card/``."""

from __future__ import annotations

from importlib.resources import files

from huggingface_hub import CardData, DatasetCard, DatasetCardData, ModelCard

TEMPLATE_NAME = "README.md"


def template_path(kind: str) -> str:
    """Path of the template of ``kind`` ("dataset_card" or "model_card"), installed with the package."""
    return str(files(f"cxr_vit.{kind}").joinpath(TEMPLATE_NAME))


def render_card(kind: str, card_data: CardData, **values) -> DatasetCard | ModelCard:
    """Fill the template with ``values``; ``card_data`` becomes the YAML header the Hub reads."""
    card_class = DatasetCard if isinstance(card_data, DatasetCardData) else ModelCard
    return card_class.from_template(card_data, template_path=template_path(kind), **values)
