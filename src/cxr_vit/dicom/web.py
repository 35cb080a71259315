"""Batch prediction over DICOMweb: find films (QIDO-RS), fetch them (WADO-RS), predict, store results (STOW-RS).

What :mod:`scripts/dicomweb_predict.py <cxr_vit.dicom.web>` runs. Films go through the same on-disk queue as the
DICOM node's (:class:`cxr_vit.dicom.spool.Spool`), so a killed run loses nothing: the CSV (one row per film, named by
its WADO-RS path ``studies/<uid>/series/<uid>/instances/<uid>``) says which films are predicted, the queue's
``outbox/`` which results are not yet stored, and ``resume`` carries on from both.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pydicom

from ..prediction import PredictionsCSV, Predictor
from .intake import FILM_SOP_CLASSES
from .processing import predict_queued
from .results import AlgorithmInfo
from .sending import StowDestination, deliver, dicomweb_client
from .spool import Spool

logger = logging.getLogger(__name__)

STUDY_UID, SERIES_UID, SOP_CLASS_UID, SOP_UID = "0020000D", "0020000E", "00080016", "00080018"
QIDO_PAGE = 1000  # matches asked for per QIDO-RS request
MAX_QIDO_MATCHES = 10_000_000  # a bound on one search's pages, far above any archive's studies


@dataclass(frozen=True, order=True)
class FilmReference:
    """Where a film is on the DICOMweb server."""

    study: str
    series: str
    instance: str

    @property
    def path(self) -> str:
        """Its WADO-RS path under the server's base URL: how the CSV names it."""
        return f"studies/{self.study}/series/{self.series}/instances/{self.instance}"


def parse_query(items: Iterable[str]) -> dict[str, str]:
    """QIDO-RS study filters from ``KEY=VALUE,KEY=VALUE`` strings; a piece without ``=`` continues the value before
    it, so ``ModalitiesInStudy=CR,DX,StudyDate=20240101-20241231`` keeps ``CR,DX`` (QIDO's list of values)."""
    filters: dict[str, str] = {}
    key = None
    for item in items:
        for piece in item.split(","):
            name, equals, value = piece.partition("=")
            if equals and name.strip():
                key = name.strip()
                filters[key] = value.strip()
            elif key is not None and piece.strip():
                filters[key] += "," + piece.strip()
            else:
                raise ValueError(
                    f"--query: expected KEY=VALUE[,KEY=VALUE...] (e.g. ModalitiesInStudy=DX), got {item!r}"
                )
    return filters


def _value(item: dict, tag: str) -> str | None:
    values = item.get(tag, {}).get("Value") or [None]
    return values[0]


def search_all(search: Callable[..., list[dict]], key: str, page: int = QIDO_PAGE, **options) -> list[dict]:
    """Every match of a QIDO-RS search, a page (``limit``/``offset``) at a time. Stops at a short page, or at a
    page with nothing new: a server that ignores ``offset`` answers the same page again (so dicomweb-client's
    ``get_remaining`` never ends against one)."""
    found: dict[str, dict] = {}
    for offset in range(0, MAX_QIDO_MATCHES, page):
        items = search(limit=page, offset=offset, **options)
        new = {_value(item, key): item for item in items if _value(item, key) not in found}
        found.update(new)
        if len(items) == page and not new:
            logger.warning(
                "the server answered the same %d matches at offset %d: it ignores QIDO offsets, so "
                "only these are used; narrow the search (e.g. by StudyDate) to get all",
                page,
                offset,
            )
        if len(items) < page or not new:
            break
    return list(found.values())


def find_films(client, studies: Sequence[str] = (), query: dict[str, str] | None = None) -> list[FilmReference]:
    """The CR/DX films of the given studies and of the studies matching ``query``, sorted, each once."""
    studies = list(studies)
    if query:
        found = search_all(client.search_for_studies, STUDY_UID, search_filters=query)
        studies += [uid for uid in (_value(item, STUDY_UID) for item in found) if uid]
    films = set()
    for study in dict.fromkeys(studies):
        for item in search_all(
            client.search_for_instances, SOP_UID, study_instance_uid=study, fields=[SOP_CLASS_UID, SERIES_UID]
        ):
            if _value(item, SOP_CLASS_UID) in FILM_SOP_CLASSES:
                films.add(FilmReference(study, _value(item, SERIES_UID), _value(item, SOP_UID)))
    return sorted(films)


def encoded(ds: pydicom.Dataset) -> bytes:
    """A retrieved instance as a DICOM file's bytes, for the queue."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@dataclass
class DicomwebRun:
    """What one run did: films predicted now, already in the CSV before, that failed (see the queue's failed/),
    and result sets stored on the server."""

    predicted: int = 0
    already: int = 0
    failed: int = 0
    stored: int = 0


def predict_dicomweb(
    url: str,
    films: Sequence[FilmReference],
    predictor: Predictor,
    algorithm: AlgorithmInfo,
    csv_path: str | os.PathLike,
    queue_dir: str | os.PathLike,
    username: str | None = None,
    password: str | None = None,
    resume: bool = False,
    batch_size: int = 16,
) -> DicomwebRun:
    """Fetch, predict and store back ``films``, a batch at a time (the CSV row is written once a film's results
    are queued; the results are stored after each batch). Raises :class:`cxr_vit.dicom.sending.DeliveryError`
    when the server refuses them (they stay queued for ``resume``)."""
    client = dicomweb_client(url, username, password)
    destination = StowDestination(url, username, password)
    spool = Spool(queue_dir)
    if not resume and any(spool.counts()[state] for state in ("incoming", "outbox")):
        raise ValueError(f"{queue_dir}: holds the queue of an earlier run; give --resume, or a new --output_dir")
    run = DicomwebRun()
    with PredictionsCSV(csv_path, resume=resume) as csv:
        todo = [film for film in films if film.path not in csv.done]
        run.already = len(films) - len(todo)
        run.stored += deliver(spool, destination)  # what an earlier run queued
        for start in range(0, len(todo), batch_size):
            batch = {film.instance: film for film in todo[start : start + batch_size]}
            paths: list[Path] = []
            for film in batch.values():
                ds = client.retrieve_instance(
                    film.study, film.series, film.instance, media_types=(("application/dicom", "*"),)
                )
                paths.append(spool.receive(film.instance, encoded(ds)))
            done = predict_queued(predictor, algorithm, spool, paths)
            for uid, prediction in done:
                prediction.path = batch[uid].path
                csv.write(prediction)
            run.predicted += len(done)
            run.failed += len(batch) - len(done)
            run.stored += deliver(spool, destination)
            logger.info("%d of %d film(s) predicted", run.predicted + run.failed, len(todo))
    return run
