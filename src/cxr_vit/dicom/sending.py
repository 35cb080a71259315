"""Where results go: a DICOM peer by C-STORE (pynetdicom) or a DICOMweb server by STOW-RS (dicomweb-client).

Both take a list of datasets and either deliver all of them or raise :class:`DeliveryError` (the caller keeps them
queued and tries again later): a peer that refuses one instance, or cannot be reached, fails the whole delivery.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pydicom
from pynetdicom import AE

from .spool import Spool

logger = logging.getLogger(__name__)

#: C-STORE statuses that mean stored: success, and the Storage service's warnings (coercion, element discarded,
#: data set does not match the SOP class: the peer kept the instance).
STORED_STATUSES = {0x0000, 0xB000, 0xB006, 0xB007}


class DeliveryError(RuntimeError):
    """The destination did not take every instance; the message says which and why."""


def parse_peer(text: str) -> tuple[str, int, str]:
    """``HOST:PORT:AET`` -> (host, port, AE title), or a ValueError that shows the expected form."""
    host, _, rest = text.partition(":")
    port, _, ae_title = rest.partition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536 or not 0 < len(ae_title) <= 16:
        raise ValueError(f"expected HOST:PORT:AET (e.g. 127.0.0.1:4242:ORTHANC), got {text!r}")
    return host, int(port), ae_title


@dataclass
class CStoreDestination:
    """A DICOM peer that stores what it is sent (a PACS, a viewer, a router)."""

    host: str
    port: int
    ae_title: str
    calling_ae_title: str = "CXR_VIT"
    timeout: float = 30.0

    @classmethod
    def parse(cls, text: str, calling_ae_title: str = "CXR_VIT") -> CStoreDestination:
        host, port, ae_title = parse_peer(text)
        return cls(host, port, ae_title, calling_ae_title)

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port} (C-STORE)"

    def send(self, datasets: Sequence[pydicom.Dataset]) -> None:
        ae = AE(ae_title=self.calling_ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout
        for sop_class, syntax in sorted({(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID) for ds in datasets}):
            ae.add_requested_context(sop_class, syntax)
        association = ae.associate(self.host, self.port, ae_title=self.ae_title)
        if not association.is_established:
            raise DeliveryError(f"{self}: association refused or peer unreachable")
        try:
            for ds in datasets:
                status = association.send_c_store(ds)
                code = getattr(status, "Status", None)
                if code not in STORED_STATUSES:
                    detail = "no answer" if code is None else f"status 0x{code:04X}"
                    raise DeliveryError(f"{self}: {ds.SOPInstanceUID} not stored ({detail})")
        finally:
            if association.is_established:
                association.release()


@dataclass
class StowDestination:
    """A DICOMweb server (``--dicomweb URL``: its base, e.g. Orthanc's ``http://host:8042/dicom-web``)."""

    url: str
    username: str | None = None
    password: str | None = None

    def __str__(self) -> str:
        return f"{self.url} (STOW-RS)"

    def send(self, datasets: Sequence[pydicom.Dataset]) -> None:
        from requests import RequestException

        try:
            response = dicomweb_client(self.url, self.username, self.password).store_instances(list(datasets))
        except (RequestException, OSError) as err:
            raise DeliveryError(f"{self}: {type(err).__name__}: {err}") from None
        failed = getattr(response, "FailedSOPSequence", None)
        if failed:
            raise DeliveryError(f"{self}: {len(failed)} instance(s) refused")


def deliver(
    spool: Spool, destination: CStoreDestination | StowDestination, stopping: Callable[[], bool] = lambda: False
) -> int:
    """Send each result folder waiting in ``spool``'s outbox, oldest first, and move it to ``sent/`` once the
    destination confirmed all of it. Returns how many were sent; raises :class:`DeliveryError` at the first that
    fails (it and those after it stay queued)."""
    sent = 0
    for folder in spool.outbox():
        if stopping():
            break
        destination.send([pydicom.dcmread(path) for path in sorted(folder.glob("*.dcm"))])
        spool.mark_sent(folder)
        logger.info("sent the results of film %s to %s", folder.name, destination)
        sent += 1
    return sent


def dicomweb_client(url: str, username: str | None = None, password: str | None = None):
    """A ``DICOMwebClient`` for ``url``, with HTTP basic authentication when a user is given (Orthanc's default)."""
    import requests
    from dicomweb_client.api import DICOMwebClient

    session = requests.Session()
    if username is not None:
        session.auth = (username, password or "")
    return DICOMwebClient(url=url, session=session)


def dicomweb_password(given: str | None) -> str | None:
    """A DICOMweb password from the command line, else from ``CXR_VIT_DICOMWEB_PASSWORD`` (kept out of ``ps``)."""
    return given if given is not None else os.environ.get("CXR_VIT_DICOMWEB_PASSWORD")
