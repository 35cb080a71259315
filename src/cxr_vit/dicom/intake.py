"""Which received objects are chest films, and whether one is whole enough to predict from."""

from __future__ import annotations

import pydicom
from pydicom.pixels import get_decoder
from pydicom.pixels.utils import get_expected_length
from pydicom.uid import UID

#: The films this package predicts: CR, and DX (what DR systems send too) for presentation or for processing.
FILM_SOP_CLASSES: tuple[UID, ...] = (
    UID("1.2.840.10008.5.1.4.1.1.1"),  # Computed Radiography Image Storage
    UID("1.2.840.10008.5.1.4.1.1.1.1"),  # Digital X-Ray Image Storage - For Presentation
    UID("1.2.840.10008.5.1.4.1.1.1.1.1"),  # Digital X-Ray Image Storage - For Processing
)


class MalformedFilmError(ValueError):
    """A CR/DX instance that cannot be predicted from; the message says what is wrong (never whose film it is)."""


def check_film(ds: pydicom.Dataset) -> None:
    """Raise :class:`MalformedFilmError` unless ``ds`` has a UID and pixel data this installation can decode.

    Cheap (no decoding): uncompressed pixel data must be as long as its rows, columns and bits say; compressed
    pixel data needs an installed decoder for its transfer syntax.
    """
    for keyword in ("SOPInstanceUID", "Rows", "Columns", "BitsAllocated", "PixelData"):
        if keyword not in ds:
            raise MalformedFilmError(f"no {keyword}")
    syntax = ds.file_meta.TransferSyntaxUID
    if syntax.is_compressed:
        if not get_decoder(syntax).is_available:
            raise MalformedFilmError(f"no decoder installed for {syntax.name}")
    elif len(ds.PixelData) < get_expected_length(ds):
        raise MalformedFilmError(f"{len(ds.PixelData)} bytes of pixel data, {get_expected_length(ds)} expected")
