"""The model card template (README.md), shipped in the package as ``cxr_vit.model_card``."""
