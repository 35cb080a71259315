"""From queued films to queued results: the one inference path in batches, then each film's SR and overlays.

Shared by the DICOM node and the DICOMweb client: films wait in a :class:`cxr_vit.dicom.spool.Spool`'s ``incoming/``,
their results (:func:`cxr_vit.dicom.films.write_film_results`, the same objects ``predict.py --dicom_output``
writes) go to its ``outbox/``; a film that cannot be read, or whose header cannot carry a result, goes to
``failed/`` with the reason, and the others carry on.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from pydicom.errors import InvalidDicomError

from ..prediction import Prediction, Predictor, UnreadableImageError, read_image
from .films import write_film_results
from .results import AlgorithmInfo
from .spool import Spool

logger = logging.getLogger(__name__)


def predict_queued(
    predictor: Predictor, algorithm: AlgorithmInfo, spool: Spool, films: Sequence[Path]
) -> list[tuple[str, Prediction]]:
    """Predict ``films`` (files in ``spool``'s ``incoming/``, one batch) and queue their results for delivery.

    Returns (SOP Instance UID, prediction) of the films that now have results, in order.
    """
    readable = []
    for path in films:
        try:
            readable.append((path, read_image(path)))
        except UnreadableImageError as err:
            logger.error("film %s could not be read: moved to failed/", path.stem)
            spool.fail(path.stem, str(err))
    predictions = predictor.predict([image for _, image in readable]) if readable else []
    done = []
    for (path, _), prediction in zip(readable, predictions, strict=True):
        uid, prediction.path = path.stem, str(path)
        try:
            spool.add_results(
                uid, lambda folder, prediction=prediction: write_film_results(predictor, prediction, algorithm, folder)
            )
        except (ValueError, TypeError, AttributeError, KeyError, InvalidDicomError) as err:
            # e.g. a header without a Study Instance UID: the reason goes to failed/<uid>.txt only, since a
            # message about a header may quote its values (a name), and logs must not
            logger.error("no results for film %s (%s): moved to failed/", uid, type(err).__name__)
            spool.fail(uid, f"{type(err).__name__}: {err}")
            continue
        done.append((uid, prediction))
    return done
