"""The dataset card template (README.md), shipped in the package as ``cxr_vit.dataset_card``."""
