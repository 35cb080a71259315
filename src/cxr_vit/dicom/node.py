"""A DICOM node: chest films in by C-STORE, the model's results (SR + heatmap overlay) out to a PACS.

Three parts, joined only by the on-disk queue (:mod:`cxr_vit.dicom.spool`), as pynetdicom's storescp splits
receiving from the work:

- **receiving** (pynetdicom's threads, one per association): accepts associations only from the allowed calling AE
  titles; a CR or DX film (for presentation or processing) is checked (parsable, pixels present and decodable
  here), written to ``incoming/`` and fsynced, and only then answered with success; a malformed one gets a failure
  status; any other storage object (a report, a CT, a presentation state) is acknowledged and dropped;
- **predicting** (one thread): takes up to ``batch_size`` films at a time from ``incoming/`` through the one inference
  path (:class:`cxr_vit.prediction.Predictor`, PyTorch or ONNX Runtime), writes the SR and an overlay per positive
  finding (:mod:`cxr_vit.dicom.processing`) into ``outbox/<film UID>/``;
- **sending** (one thread): delivers each ``outbox/`` folder to the destination (C-STORE or STOW-RS) and moves it
  to ``sent/``; while the destination is down the results stay queued and are retried every ``retry_interval``.

A kill at any point loses nothing acknowledged: on restart the queue resumes where it was; a step cut short is done
again with the same result UIDs (derived from the film's UID and the model), so the destination keeps one copy.
Logs name films by SOP Instance UID and callers by AE title, never by patient name or ID.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

from pydicom.errors import InvalidDicomError
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt

from ..prediction import Predictor
from .intake import FILM_SOP_CLASSES, MalformedFilmError, check_film
from .processing import predict_queued
from .results import AlgorithmInfo
from .sending import CStoreDestination, DeliveryError, StowDestination, deliver
from .spool import Spool, is_uid

logger = logging.getLogger(__name__)

STATUS_SUCCESS = 0x0000
STATUS_NOT_MATCHING_SOP_CLASS = 0xA900  # a film without usable pixels
STATUS_CANNOT_UNDERSTAND = 0xC000  # not parsable at all
STATUS_OUT_OF_RESOURCES = 0xA700  # the film could not be stored here (disk full, ...)


class DicomNode:
    """The receiving, predicting and sending parts over one queue folder; :meth:`start`, then :meth:`stop`.

    Args:
        predictor: the model, its thresholds and explainer (:class:`cxr_vit.prediction.Predictor`).
        algorithm: how the results name the model (id, version, where its thresholds came from).
        output_dir: the queue (:class:`cxr_vit.dicom.spool.Spool`), kept across restarts.
        destination: a :class:`CStoreDestination` or :class:`StowDestination`.
        ae_title / host / port: the node's own address; port 0 takes a free one (see :attr:`port`).
        allowed_ae: calling AE titles that may associate; every other caller is rejected at association.
        batch_size: films per forward pass; ``batch_wait`` seconds are waited for a batch to fill.
        retry_interval: seconds between deliveries while the destination is down.
    """

    def __init__(
        self,
        predictor: Predictor,
        algorithm: AlgorithmInfo,
        output_dir: str | Path,
        destination: CStoreDestination | StowDestination,
        ae_title: str,
        allowed_ae: Sequence[str],
        host: str = "127.0.0.1",
        port: int = 0,
        batch_size: int = 16,
        batch_wait: float = 0.5,
        retry_interval: float = 10.0,
    ):
        if not allowed_ae:
            raise ValueError("allowed_ae: name at least one calling AE title")
        self.predictor, self.algorithm, self.destination = predictor, algorithm, destination
        self.spool = Spool(output_dir)
        self.ae_title, self.allowed_ae, self.host, self.requested_port = ae_title, list(allowed_ae), host, port
        self.batch_size, self.batch_wait, self.retry_interval = batch_size, batch_wait, retry_interval
        self._stopping = threading.Event()
        self._wake_worker, self._wake_sender = threading.Event(), threading.Event()
        self._threads: list[threading.Thread] = []
        self._server = None

    # ---- receiving ------------------------------------------------------------------------------------------------

    def _application_entity(self) -> AE:
        ae = AE(ae_title=self.ae_title)
        ae.require_calling_aet = self.allowed_ae
        for context in AllStoragePresentationContexts:  # everything is acknowledged; only films are kept
            syntaxes = ALL_TRANSFER_SYNTAXES if context.abstract_syntax in FILM_SOP_CLASSES else None
            ae.add_supported_context(context.abstract_syntax, syntaxes)
        return ae

    def _on_store(self, event) -> int:
        request, caller = event.request, event.assoc.requestor.ae_title
        if request.AffectedSOPClassUID not in FILM_SOP_CLASSES:
            logger.info("ignored a %s from %s (not a CR/DX film)", request.AffectedSOPClassUID.name, caller)
            return STATUS_SUCCESS
        uid = str(request.AffectedSOPInstanceUID)
        try:
            ds = event.dataset
            ds.file_meta = event.file_meta
            check_film(ds)
            if ds.SOPInstanceUID != uid or not is_uid(uid):
                raise MalformedFilmError("its SOP Instance UID is not a UID or differs from the request's")
        except MalformedFilmError as err:
            logger.warning("refused film %s from %s: %s", uid, caller, err)
            return STATUS_NOT_MATCHING_SOP_CLASS
        except (InvalidDicomError, ValueError, TypeError, KeyError, AttributeError, EOFError, OSError) as err:
            logger.warning("refused film %s from %s: not parsable (%s)", uid, caller, type(err).__name__)
            return STATUS_CANNOT_UNDERSTAND
        try:
            self.spool.receive(uid, event.encoded_dataset())
        except (OSError, ValueError) as err:
            logger.error("could not store film %s: %s", uid, err)
            return STATUS_OUT_OF_RESOURCES
        logger.info("received film %s from %s", uid, caller)
        self._wake_worker.set()
        return STATUS_SUCCESS

    @property
    def port(self) -> int:
        """The port the node listens on (the one chosen when started with port 0)."""
        return self._server.server_address[1]

    # ---- predicting -----------------------------------------------------------------------------------------------

    def _next_batch(self) -> list[Path]:
        films = self.spool.incoming()
        if 0 < len(films) < self.batch_size and self.batch_wait > 0:  # let a burst fill the batch
            self._stopping.wait(self.batch_wait)
            films = self.spool.incoming()
        return films[: self.batch_size]

    def _predict(self, films: list[Path]) -> None:
        started = time.perf_counter()
        predict_queued(self.predictor, self.algorithm, self.spool, films)
        logger.info("predicted %d film(s) in %.2f s", len(films), time.perf_counter() - started)
        self._wake_sender.set()

    def _predict_loop(self) -> None:
        while not self._stopping.is_set():
            films = self._next_batch()
            if not films:
                self._wake_worker.wait(1.0)
                self._wake_worker.clear()
                continue
            try:
                self._predict(films)
            except Exception as err:  # a bug or a full disk must not end the node silently: say so and try again
                where = traceback.extract_tb(err.__traceback__)[-1]  # not the message: it may quote a header value
                logger.error(
                    "prediction of %d film(s) failed (%s at %s:%d); retrying in %.1f s",
                    len(films), type(err).__name__, where.filename, where.lineno, self.retry_interval,
                )  # fmt: skip
                self._stopping.wait(self.retry_interval)

    # ---- sending --------------------------------------------------------------------------------------------------

    def _send_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                deliver(self.spool, self.destination, self._stopping.is_set)
            except (DeliveryError, OSError) as err:  # OSError: a folder replaced under it by a film sent again
                waiting = len(self.spool.outbox())
                logger.warning("%s; %d result(s) stay queued, retrying in %.1f s", err, waiting, self.retry_interval)
                self._stopping.wait(self.retry_interval)
                continue
            self._wake_sender.wait(1.0)
            self._wake_sender.clear()

    # ---- life cycle -----------------------------------------------------------------------------------------------

    def start(self) -> DicomNode:
        """Listen, and start predicting and sending whatever the queue already holds (a restart resumes)."""
        if self._server is not None:
            raise RuntimeError("the node is already started")
        quiet_library_logs()
        counts = self.spool.counts()
        if counts["incoming"] or counts["outbox"]:
            logger.info("resuming: %d film(s) to predict, %d result(s) to send", counts["incoming"], counts["outbox"])
        self._server = self._application_entity().start_server(
            (self.host, self.requested_port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)]
        )
        for target in (self._predict_loop, self._send_loop):
            thread = threading.Thread(target=target, name=f"cxr-vit-{target.__name__.strip('_')}", daemon=True)
            thread.start()
            self._threads.append(thread)
        logger.info("listening on %s:%d as %s, sending to %s", self.host, self.port, self.ae_title, self.destination)
        return self

    def stop(self) -> None:
        """Stop listening, let the current batch and delivery finish, and return (what is queued stays queued)."""
        if self._server is not None:
            self._server.shutdown()
        self._stopping.set()
        self._wake_worker.set()
        self._wake_sender.set()
        for thread in self._threads:
            thread.join()

    def __enter__(self) -> DicomNode:
        return self if self._server is not None else self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def quiet_library_logs() -> None:
    """pynetdicom at DEBUG prints whole requests and highdicom lists every attribute it copies: keep both to
    warnings, so that no log level shows a patient's name."""
    for name in ("pynetdicom", "highdicom"):
        logging.getLogger(name).setLevel(logging.WARNING)
