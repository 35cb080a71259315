"""DICOM results for films predicted from files: what ``predict.py --dicom_output`` writes per DICOM input."""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

import pydicom

from ..data.images import dicom_to_gray, is_dicom
from ..prediction import Prediction, Predictor
from .heatmaps import film_heatmaps
from .results import AlgorithmInfo, build_results, write_results


def algorithm_info(
    predictor: Predictor, name_or_path: str | os.PathLike, thresholds_file: str | os.PathLike | None = None
) -> AlgorithmInfo:
    """The identification of ``predictor``'s model (the first of an ensemble, with the member count); a
    ``thresholds_file`` is named by its file name only, as no local path goes into the results."""
    source = predictor.thresholds_source
    if thresholds_file is not None:
        source = source.replace(str(thresholds_file), Path(thresholds_file).name)
    info = AlgorithmInfo.for_model(name_or_path, predictor.model.config, source)
    members = len(predictor.ensemble.members) if predictor.ensemble is not None else 1
    name = f"{info.name} (+{members - 1} in ensemble)" if members > 1 else info.name
    return dataclasses.replace(info, name=name, computed_in=f"{predictor.runtime} on {predictor.device}")


def predictor_for_results(args: argparse.Namespace) -> tuple[Predictor, AlgorithmInfo]:
    """The DICOM scripts' predictor (``--model``, ``--thresholds``, ``--backend``, ``--device``, ``--precision``)
    and the identification its results carry."""
    predictor = Predictor.from_pretrained(
        args.model, device=args.device, precision=args.precision, thresholds_file=args.thresholds, backend=args.backend
    )
    return predictor, algorithm_info(predictor, args.model, args.thresholds)


def write_film_results(
    predictor: Predictor, prediction: Prediction, algorithm: AlgorithmInfo, folder: str | os.PathLike
) -> list[Path]:
    """The SR (and, where the predictor has an explainer, an overlay per positive finding) for the DICOM file
    ``prediction.path``, saved in ``folder``; nothing for a file that is not DICOM. A film whose header cannot
    place results in its study raises ``ValueError`` naming the file."""
    path = prediction.path
    if not is_dicom(path):
        return []
    source = pydicom.dcmread(path)
    film = heatmaps = None
    if predictor.explainer is not None and prediction.positives:
        film = dicom_to_gray(source, path)
        heatmaps = film_heatmaps(predictor, film, prediction.positives)
    try:
        results = build_results(source, prediction.probabilities, predictor.thresholds, heatmaps, algorithm, film)
    except ValueError as err:
        raise ValueError(f"{path}: no DICOM results written: {err}") from err
    return write_results(results, folder)
