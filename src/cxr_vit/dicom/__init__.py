"""DICOM in and out for a hospital's archive: results as DICOM objects (a TID 1500 SR and heatmap overlays).

Sits above :mod:`cxr_vit.inference` and :mod:`cxr_vit.prediction` (it uses the one inference path); nothing below
imports it.
"""

from .codes import FINDING_CODES, PRIVATE_SCHEME
from .films import algorithm_info, write_film_results
from .heatmaps import film_heatmaps
from .results import AlgorithmInfo, build_results, deterministic_uid, result_uid, write_results

__all__ = [
    "FINDING_CODES",
    "PRIVATE_SCHEME",
    "AlgorithmInfo",
    "algorithm_info",
    "build_results",
    "deterministic_uid",
    "film_heatmaps",
    "result_uid",
    "write_film_results",
    "write_results",
]
