"""Decode X-ray files (PNG, JPEG, TIFF, BMP and DICOM) into 8-bit grayscale, the form every later stage expects.

Supported inputs, each exercised by ``tests/test_xray_io.py``:

==============================================  =================================================================
Input                                           How it becomes 8-bit grayscale
==============================================  =================================================================
8-bit PNG (L, LA, P), TIFF (L), BMP (RGB),      unchanged if ``L``, else Pillow's ``convert("L")``
JPEG (RGB)
16-bit grayscale PNG with ``sBIT`` (e.g. 12)    scaled from the declared ``0..2**sBIT - 1``; values above it are
                                                PNG-spec scaled-up samples and are scaled from 0..65535
12-bit TIFF (BitsPerSample 12)                  scaled from ``0..4095``
16-bit grayscale PNG, no declared depth         every value a multiple of 257 (8-bit data widened by bit
                                                replication, as Pillow/libpng/ImageMagick do): ``value / 257``;
                                                every value within 0..255: taken as is; otherwise the percentile
                                                window ``PERCENTILE_WINDOW`` (0.5th..99.5th) stretched to 0..255
DICOM Part 10 (``DICM`` at byte 128; named      one frame, MONOCHROME1/2, Bits Stored 8 to 16, unsigned or
``.dcm``, ``.dicom``, by UID or without         signed; Modality LUT (Rescale Slope/Intercept or Modality LUT
extension), DX or CR; transfer syntaxes         Sequence), then VOI LUT Sequence, else the first Window
Explicit/Implicit VR Little Endian, Explicit    Center/Width (LINEAR, LINEAR_EXACT, SIGMOID), else the range Bits
VR Big Endian, Deflated, RLE Lossless           Stored declares (through the rescale) if the central 99% of the
(pydicom), JPEG 2000 lossless/lossy (Pillow),   pixels fill half of it, else the pixels' own range (the percentile
JPEG Baseline/Extended (8/12-bit), JPEG         window if outliers stretch it over twice); then MONOCHROME1
Lossless (Process 14, SV1), JPEG-LS lossless    inversion
and near-lossless (pylibjpeg-libjpeg)
==============================================  =================================================================

Rejected with :class:`XrayReadError`, naming the file and what is wrong: missing, empty, truncated or non-image
files, and DICOM files that are multi-frame, colour, hold no image (e.g. a structured report), or are compressed
with a syntax whose decoder is not installed (the core install has them all; the message names the packages).
Each compressed syntax is tested on files made by dcmtk and gdcm (``tests/test_dicom_decoding.py``); others are
attempted whenever pydicom reports a decoder for them.

Not handled: 16-bit RGB or grey+alpha PNGs (Pillow keeps only their high byte), the Presentation LUT Shape, and
any window but the first.
"""

from __future__ import annotations

import contextlib
import io
import os
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut, apply_voi, get_decoder
from pydicom.uid import UID

DICOM_SUFFIXES: tuple[str, ...] = (".dcm", ".dicom")
XRAY_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", *DICOM_SUFFIXES)
# Without a declared bit depth, high-bit-depth pixels are windowed to these percentiles: robust to the few
# burned-in labels and dead pixels that would set a min..max window, and they cut at most 1% of the pixels.
PERCENTILE_WINDOW: tuple[float, float] = (0.5, 99.5)
# A DICOM without a VOI window is shown over a range only when its central pixels fill at least this share of it.
_FILLED = 0.5
# That choice is made on a grid of about this many pixels (every k-th row and column): exact percentiles of a
# whole detector image (7.5 MP) take longer than decoding it, and a sample this size decides a factor of 2 alike.
_DECIDING_PIXELS = 2**20

_HIGH_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
# Errors Pillow and pydicom raise for files that are not what they claim: every one becomes an XrayReadError.
_DECODE_ERRORS = (
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    KeyError,
    IndexError,
    TypeError,
    AttributeError,
    NotImplementedError,
    RuntimeError,
    struct.error,
    zlib.error,
    InvalidDicomError,
    Image.DecompressionBombError,
)


class XrayReadError(ValueError):
    """A file that cannot be read as an X-ray; the message names the file, what is wrong and how to fix it."""


class DicomReadError(XrayReadError):
    """A DICOM file this reader does not support (multi-frame, colour, no image, missing decoder, corrupt)."""


class MemberFile(io.BytesIO):
    """The bytes of one file read out of an archive, accepted wherever a path is: the readers below decode it
    from memory, and its ``name`` (``archive:member``) stands in for the path in messages and suffix checks."""

    def __init__(self, data: bytes, name: str):
        super().__init__(data)
        self.name = name

    def __str__(self) -> str:
        return self.name


XraySource = str | os.PathLike | MemberFile


def _rewound(source: XraySource) -> XraySource:
    if isinstance(source, MemberFile):
        source.seek(0)
    return source


def _open_binary(source: XraySource):
    return contextlib.nullcontext(_rewound(source)) if isinstance(source, MemberFile) else open(source, "rb")


def _suffix(source: XraySource) -> str:
    return Path(str(source)).suffix.lower()


def is_dicom(path: XraySource) -> bool:
    """True if the file starts like a DICOM Part 10 file: a 128-byte preamble then ``DICM``.

    Content, not the name, decides: PACS exports are often named by UID (``1.2.840...``) or have no extension.
    """
    try:
        with _open_binary(path) as file:
            head = file.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def is_xray_file(path: str | os.PathLike) -> bool:
    """True for the file names :func:`read_xray` reads (PNG/JPEG/TIFF/BMP/DICOM) and for DICOM content."""
    return Path(path).suffix.lower() in XRAY_SUFFIXES or is_dicom(path)


def read_xray(path: XraySource) -> Image.Image:
    """Fully decode one X-ray file to 8-bit grayscale (mode ``L``), DICOM recognised by content.

    Raises :class:`XrayReadError` (:class:`DicomReadError` for DICOM files) naming the file for anything that
    cannot be read, so a folder of mixed files can be processed file by file.
    """
    if is_dicom(path):
        return read_dicom(path)
    if _suffix(path) in DICOM_SUFFIXES and (isinstance(path, MemberFile) or Path(path).is_file()):
        raise DicomReadError(
            f"{path}: named like a DICOM file but has no DICOM header ('DICM' at byte 128); only DICOM Part 10 "
            "files can be read: re-export it from the PACS or viewer as a standard DICOM file"
        )
    try:
        with Image.open(_rewound(path)) as image:
            image.load()  # decode now, so a truncated file fails here, naming this path
            return to_grayscale_uint8(image, _declared_bits(image, path))
    except FileNotFoundError as err:
        raise XrayReadError(f"{path}: no such file") from err
    except IsADirectoryError as err:
        raise XrayReadError(f"{path}: is a folder, not an image file") from err
    except Image.DecompressionBombError as err:
        raise XrayReadError(f"{path}: {err}") from err
    except Image.UnidentifiedImageError as err:
        raise XrayReadError(f"{path}: not an image file (PNG, JPEG, TIFF, BMP or DICOM) or empty") from err
    except _DECODE_ERRORS as err:
        raise XrayReadError(f"{path}: cannot be decoded, the file is truncated or corrupt ({err})") from err


def xray_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) from the file's header only, to refuse huge images before decoding them."""
    try:
        if is_dicom(path):
            header = pydicom.dcmread(path, stop_before_pixels=True)
            return int(header.Columns), int(header.Rows)
        with Image.open(path) as image:
            return image.size
    except _DECODE_ERRORS as err:
        raise XrayReadError(f"{path}: not a readable image header ({err})") from err


def to_grayscale_uint8(image: Image.Image, significant_bits: int | None = None) -> Image.Image:
    """Convert any PIL mode to 8-bit grayscale (mode ``L``).

    8-bit modes: ``L`` is returned as is, others go through Pillow's ``convert("L")``. 16/32-bit and float
    pixels are scaled from the depth the file declares (``significant_bits``: PNG ``sBIT``, TIFF BitsPerSample)
    or, without one, by :func:`high_depth_to_uint8`'s content rules; never blindly from 0..65535, which turns a
    12-bit image nearly black.
    """
    if image.mode == "L":
        return image
    if image.mode in _HIGH_DEPTH_MODES:
        return Image.fromarray(high_depth_to_uint8(np.asarray(image), significant_bits))
    return image.convert("L")


def high_depth_to_uint8(values: np.ndarray, significant_bits: int | None = None) -> np.ndarray:
    """Map grayscale values wider than 8 bits onto 0..255 (see the module docstring's table)."""
    values = np.asarray(values)
    if values.size == 0:
        return np.zeros(values.shape, dtype=np.uint8)
    low, high = values.min(), values.max()
    if significant_bits is not None:
        top = 2**significant_bits - 1
        # PNG scales samples up to its 16 bits and sBIT says how many were significant; DICOM exporters often
        # write the raw values instead. Values above the declared maximum can only be the scaled-up kind.
        scale = top if high <= top else 65535
        return _to_uint8(values.astype(np.float64) * (255.0 / scale))
    if low >= 0 and high <= 65535 and values.dtype.kind in "iu" and not np.any(values % 257):
        return (values // 257).astype(np.uint8)  # 8-bit data widened by bit replication: exact
    if low >= 0 and high <= 255:
        return _to_uint8(values.astype(np.float64))  # 8-bit grey levels stored in a wider type
    lower, upper = np.percentile(values, PERCENTILE_WINDOW)
    if upper <= lower:  # (almost) flat image: no percentile window exists, fall back to its full range
        lower, upper = float(low), float(high)
    return _to_uint8((values.astype(np.float64) - lower) * (255.0 / max(upper - lower, 1e-12)))


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return np.clip(values + 0.5, 0, 255).astype(np.uint8)  # round half up, as this module always has


def _declared_bits(image: Image.Image, path: XraySource) -> int | None:
    """Significant bits a high-bit-depth PNG (``sBIT``) or TIFF (BitsPerSample below 16) declares, else None."""
    if not image.mode.startswith("I;16"):
        return None
    if image.format == "PNG":
        return _png_significant_bits(path)
    if image.format == "TIFF":
        bits = image.tag_v2.get(258)  # BitsPerSample; Pillow opens 12-bit TIFFs as I;16 with raw values
        bits = bits[0] if isinstance(bits, tuple) else bits
        return int(bits) if bits and int(bits) < 16 else None
    return None


def _png_significant_bits(path: XraySource) -> int | None:
    """The grey channel's ``sBIT`` (Pillow does not read this chunk), or None if the PNG has none."""
    with _open_binary(path) as file:
        if file.read(8) != b"\x89PNG\r\n\x1a\n":
            return None
        for _ in range(1000):  # sBIT must come before IDAT; ancillary chunks before it are few
            header = file.read(8)
            if len(header) < 8:
                return None
            length, kind = struct.unpack(">I4s", header)
            if kind == b"sBIT":
                data = file.read(length)
                return data[0] if data and 1 <= data[0] <= 16 else None
            if kind in (b"IDAT", b"IEND"):
                return None
            file.seek(length + 4, io.SEEK_CUR)  # data and CRC
    return None


def read_dicom(path: XraySource) -> Image.Image:
    """Decode a single-frame grayscale DICOM image to 8-bit grayscale (mode ``L``).

    In display order (DICOM PS3.3 C.11): Modality LUT (Rescale Slope/Intercept or Modality LUT Sequence), then
    VOI LUT Sequence, else Window Center/Width (first pair), else the full range that Bits Stored declares
    (through the rescale), so intensities keep the meaning the detector gave them, unless the pixels leave most of
    that range empty (see :func:`_window_without_voi`); then MONOCHROME1 inversion.
    Raises :class:`DicomReadError` naming the file and the problem.
    """
    try:
        ds = pydicom.dcmread(_rewound(path))
    except FileNotFoundError as err:
        raise DicomReadError(f"{path}: no such file") from err
    except _DECODE_ERRORS as err:
        raise DicomReadError(f"{path}: not a readable DICOM file, it is truncated or corrupt ({err})") from err
    return dicom_to_gray(ds, path)


def dicom_to_gray(ds: pydicom.Dataset, path: XraySource) -> Image.Image:
    """:func:`read_dicom` for a dataset already in memory (e.g. received over the network); ``path`` names it in
    errors. Raises :class:`DicomReadError`."""
    _check_supported(ds, path)
    try:
        stored = ds.pixel_array
        unit = _display_values(ds, stored)
    except _DECODE_ERRORS as err:
        raise DicomReadError(
            f"{path}: the DICOM pixel data cannot be decoded, the file is truncated or corrupt ({err})"
        ) from err
    if ds.PhotometricInterpretation == "MONOCHROME1":  # 0 is white: invert to the usual dark-background film
        unit = 1.0 - unit
    return Image.fromarray(_to_uint8(unit * 255.0))


def _check_supported(ds: pydicom.Dataset, path: str | os.PathLike) -> None:
    """Raise a DicomReadError for anything other than one decodable grayscale frame."""
    if "PixelData" not in ds:
        sop_class = ds.get("SOPClassUID") or getattr(ds, "file_meta", {}).get("MediaStorageSOPClassUID")
        if sop_class is None or "Rows" in ds or "Image Storage" in UID(sop_class).name:
            # pydicom stops quietly at the end of a cut-off file: an image object without pixels is truncated
            raise DicomReadError(
                f"{path}: DICOM file ends before its Pixel Data: the file is truncated or corrupt (copy it again)"
            )
        floats = " (it has float pixel data, e.g. a parametric map)" if "FloatPixelData" in ds else ""
        raise DicomReadError(
            f"{path}: DICOM file holds no image{floats}: it is a {UID(sop_class).name} ({sop_class}) object. Only "
            "X-ray images (e.g. Digital X-Ray or CR Image Storage) can be read"
        )
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise DicomReadError(
            f"{path}: colour DICOM image (Photometric Interpretation {photometric or 'missing'!r}, {samples} "
            "sample(s) per pixel); only grayscale X-rays (MONOCHROME1 or MONOCHROME2) can be read: export it as "
            "grayscale"
        )
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames != 1:
        raise DicomReadError(
            f"{path}: multi-frame DICOM ({frames} frames); only single-frame images can be read: export the frame "
            "you want as its own file"
        )
    if "Rows" not in ds or "Columns" not in ds:
        raise DicomReadError(f"{path}: DICOM image without Rows/Columns: the file is corrupt")
    if Image.MAX_IMAGE_PIXELS and int(ds.Rows) * int(ds.Columns) > 2 * Image.MAX_IMAGE_PIXELS:
        raise DicomReadError(
            f"{path}: {ds.Columns}x{ds.Rows} pixels exceeds the {2 * Image.MAX_IMAGE_PIXELS} pixel limit (Pillow's "
            "decompression-bomb guard)"
        )
    syntax = getattr(ds, "file_meta", {}).get("TransferSyntaxUID")
    if syntax is not None and UID(syntax).is_compressed:
        syntax = UID(syntax)
        try:
            decoder = get_decoder(syntax)
        except NotImplementedError as err:
            raise DicomReadError(
                f"{path}: compressed with transfer syntax {syntax.name} ({syntax}), which pydicom cannot decode: "
                "re-export it uncompressed"
            ) from err
        if not decoder.is_available:
            options = [missing.split(" - requires ", 1)[-1] for missing in decoder.missing_dependencies]
            example = next((option for option in options if "pylibjpeg" in option), options[0])
            packages = " ".join(f"'{name.strip()}'" for name in example.split(" and ") if name.strip() != "numpy")
            raise DicomReadError(
                f"{path}: compressed with transfer syntax {syntax.name} ({syntax}) and no decoder for it is "
                f"installed; pydicom can use any of: {' | '.join(options)} (e.g. pip install {packages}). Or "
                "re-export the file uncompressed"
            )


def _display_values(ds: pydicom.Dataset, stored: np.ndarray) -> np.ndarray:
    """Stored pixel values -> [0, 1] brightness before MONOCHROME1 inversion (Modality LUT, then VOI)."""
    if stored.ndim != 2:
        raise ValueError(f"decoded pixel array has shape {stored.shape}, expected one 2-D frame")
    bits = int(ds.get("BitsStored") or ds.BitsAllocated)
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    if ds.get("ModalityLUTSequence"):
        values = apply_modality_lut(stored, ds)
        low, high = 0, _lut_top(ds.ModalityLUTSequence[0], lambda index: apply_modality_lut(index, ds))
    elif "RescaleSlope" in ds and "RescaleIntercept" in ds:
        values = apply_modality_lut(stored, ds)
        slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
        low, high = sorted((low * slope + intercept, high * slope + intercept))
    else:
        values = stored
    voi_lut = ds.get("VOILUTSequence")
    if voi_lut and "LUTDescriptor" in voi_lut[0] and "LUTData" in voi_lut[0]:
        indices = np.rint(values).astype(np.int64)  # the LUT is indexed by (integral) modality values
        return apply_voi(indices, ds).astype(np.float64) / _lut_top(voi_lut[0], lambda index: apply_voi(index, ds))
    values = np.asarray(values, dtype=np.float64)
    window = _window(ds)
    if window is not None:
        return _apply_window(values, *window)
    low, high = _window_without_voi(values, low, high)
    return np.clip((values - low) / max(high - low, 1e-12), 0.0, 1.0)


def _window_without_voi(values: np.ndarray, low: float, high: float) -> tuple[float, float]:
    """The (low, high) to show when the file has neither a VOI LUT nor a window, in Modality LUT units.

    The range Bits Stored declares (``low``..``high``, through the Modality LUT) when the central 99% of the pixels
    (the ``PERCENTILE_WINDOW``) fill at least half of it. Otherwise the declaration is not the data's (12-bit
    values stored as Bits Stored 16 are common, and windowing them to 0..65535 gives a black film): the pixels'
    own range, or, when outliers (a burned-in marker, dead pixels) stretch it past twice the percentile window,
    that window, as for a 16-bit PNG without a declared depth.
    """
    step = max(1, int(np.sqrt(values.size / _DECIDING_PIXELS)))
    lower, upper = np.percentile(values[::step, ::step], PERCENTILE_WINDOW)
    if upper - lower >= _FILLED * (high - low):
        return low, high
    smallest, largest = float(values.min()), float(values.max())
    if largest - smallest > (upper - lower) / _FILLED:
        lower, upper = np.percentile(values, PERCENTILE_WINDOW)  # the window itself: exact, as for a PNG
        return float(lower), float(upper)
    return smallest, largest


def _lut_top(item: pydicom.Dataset, lut: Callable[[np.ndarray], np.ndarray]) -> int:
    """A LUT's output maximum: ``2**bits - 1`` for the LUT Descriptor's bits per entry, lowered to the bits the
    LUT data really use (some vendors declare 16 and store 12, as dcmtk also allows for)."""
    entries, first, declared = (int(value) for value in item.LUTDescriptor)
    largest = int(lut(np.arange(first, first + (entries or 65536))).max())
    return 2 ** max(1, min(declared, largest.bit_length())) - 1


def _window(ds: pydicom.Dataset) -> tuple[float, float, str] | None:
    """The first Window Center/Width pair and VOI LUT Function, or None when absent or unusable."""
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return None
    center, width = ds.WindowCenter, ds.WindowWidth
    center = float(center[0] if isinstance(center, MultiValue) else center)
    width = float(width[0] if isinstance(width, MultiValue) else width)
    function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
    if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        function = "LINEAR"  # the standard's default for the defined terms it does not list
    if width < (1 if function == "LINEAR" else 1e-12):
        return None  # an invalid window: show the full range instead of refusing a readable image
    return center, width, function


def _apply_window(values: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2 windowing onto [0, 1]."""
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    if function == "LINEAR_EXACT":
        return np.clip((values - center) / width + 0.5, 0.0, 1.0)
    if width == 1:
        return (values > center - 0.5).astype(np.float64)
    return np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


def resize_shorter_side(image: Image.Image, size: int) -> Image.Image:
    """Shrink so the shorter side is ``size`` (aspect kept); never enlarge."""
    width, height = image.size
    shorter = min(width, height)
    if shorter <= size:
        return image
    scale = size / shorter
    new_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    # reducing_gap: a fast box pre-shrink before the filter; the result is visually identical.
    return image.resize(new_size, Image.Resampling.BICUBIC, reducing_gap=3.0)


def load_xray(path: XraySource, image_size: int | None = None) -> Image.Image:
    """:func:`read_xray`, optionally shrunk so the shorter side is ``image_size``; raises XrayReadError."""
    gray = read_xray(path)
    return resize_shorter_side(gray, image_size) if image_size else gray


def encode_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()
