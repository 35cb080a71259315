"""Test helpers: write X-ray files the way scanners and export tools do (DICOM, 16-bit PNG, 12-bit TIFF).

Every writer takes the pixel values to store, so a test controls exactly what the reader has to undo.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin
from pydicom import uid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence as DicomSequence


def to_bits(gray: np.ndarray, bits: int) -> np.ndarray:
    """8-bit grey levels spread over ``0..2**bits - 1`` (``round(g * (2**bits - 1) / 255)``), as uint16."""
    return np.rint(np.asarray(gray, dtype=np.float64) * ((2**bits - 1) / 255.0)).astype(np.uint16)


def _lut_item(data: Sequence[int], first_mapped: int, bits: int) -> Dataset:
    item = Dataset()
    item.LUTDescriptor = [len(data) % 65536, first_mapped, bits]
    # OW: how 16-bit LUTs are usually stored (pydicom picks the byte order at decode time)
    item.add_new("LUTData", "OW", np.asarray(data, dtype="<u2").tobytes())
    return item


def write_dicom(
    path: str | Path,
    pixels: np.ndarray,
    *,
    bits_stored: int = 12,
    photometric: str = "MONOCHROME2",
    slope: float | None = None,
    intercept: float | None = None,
    window: tuple[float, float] | None = None,
    voi_function: str | None = None,
    modality_lut: tuple[Sequence[int], int, int] | None = None,
    voi_lut: tuple[Sequence[int], int, int] | None = None,
    transfer_syntax: str = uid.ExplicitVRLittleEndian,
    sop_class: str = uid.DigitalXRayImageStorageForPresentation,
) -> Path:
    """Write a DICOM Part 10 file (preamble + ``DICM``) holding ``pixels`` as stored values.

    ``pixels``: (rows, cols) for one grayscale frame, (frames, rows, cols) for multi-frame, (rows, cols, 3) with
    ``photometric="RGB"`` for colour; unsigned or signed integers (signed sets Pixel Representation 1).
    ``window``: (center, width); ``modality_lut`` / ``voi_lut``: (LUT data, first mapped value, bits per entry).
    ``transfer_syntax``: the uncompressed ones and RLE Lossless are encoded by pydicom itself; JPEG Baseline and
    JPEG 2000 (lossless or lossy) frames are made by Pillow and encapsulated; any other gets a placeholder frame.
    """
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.Modality = "CR" if sop_class == uid.ComputedRadiographyImageStorage else "DX"
    ds.PatientID = "TEST"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uid.generate_uid(), uid.generate_uid()
    ds.set_pixel_data(np.asarray(pixels), photometric, bits_stored)  # sets SOP Instance UID, rows, bits, ...
    if slope is not None or intercept is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope if slope is not None else 1, intercept or 0
        ds.RescaleType = "US"
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if voi_function is not None:
        ds.VOILUTFunction = voi_function
    if modality_lut is not None:
        ds.ModalityLUTSequence = DicomSequence([_lut_item(*modality_lut)])
        ds.ModalityLUTSequence[0].ModalityLUTType = "US"
    if voi_lut is not None:
        ds.VOILUTSequence = DicomSequence([_lut_item(*voi_lut)])
    _encode(ds, np.asarray(pixels), uid.UID(transfer_syntax))
    ds.save_as(path, enforce_file_format=True)
    return Path(path)


def _encode(ds: Dataset, pixels: np.ndarray, transfer_syntax: uid.UID) -> None:
    if transfer_syntax in (uid.ExplicitVRLittleEndian, uid.ImplicitVRLittleEndian, uid.DeflatedExplicitVRLittleEndian):
        ds.file_meta.TransferSyntaxUID = transfer_syntax
    elif transfer_syntax == uid.ExplicitVRBigEndian:
        ds.file_meta.TransferSyntaxUID = transfer_syntax
        ds.PixelData = pixels.astype(pixels.dtype.newbyteorder(">")).tobytes()  # written as stored: big endian
    elif transfer_syntax == uid.RLELossless:
        ds.compress(uid.RLELossless, encoding_plugin="pydicom", generate_instance_uid=False)
    elif transfer_syntax in (uid.JPEGBaseline8Bit, uid.JPEG2000Lossless, uid.JPEG2000):
        buffer = io.BytesIO()
        image = Image.fromarray(pixels)
        if transfer_syntax == uid.JPEGBaseline8Bit:
            image.save(buffer, format="JPEG", quality=95)
        elif transfer_syntax == uid.JPEG2000Lossless:
            image.save(buffer, format="JPEG2000", no_jp2=True, irreversible=False)
        else:  # lossy: the irreversible wavelet at a 10:1 compression ratio
            image.save(
                buffer, format="JPEG2000", no_jp2=True, irreversible=True, quality_mode="rates", quality_layers=[10]
            )
        _encapsulate(ds, [buffer.getvalue()], transfer_syntax)
    else:  # a syntax no writer here can produce: valid header, placeholder frame (for "no decoder" tests)
        _encapsulate(ds, [b"\xff\xd8" + bytes(64) + b"\xff\xd9"], transfer_syntax)


def _encapsulate(ds: Dataset, frames: list[bytes], transfer_syntax: uid.UID) -> None:
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    ds.PixelData = encapsulate(frames)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    if transfer_syntax in (uid.JPEGBaseline8Bit, uid.JPEG2000):
        ds.LossyImageCompression = "01"


def write_structured_report(path: str | Path) -> Path:
    """A minimal Basic Text SR: a valid DICOM file with no image in it."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = uid.BasicTextSRStorage, uid.generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uid.generate_uid(), uid.generate_uid()
    ds.Modality, ds.PatientID, ds.ValueType = "SR", "TEST", "CONTAINER"
    ds.save_as(path, enforce_file_format=True)
    return Path(path)


def write_png16(path: str | Path, pixels: np.ndarray, significant_bits: int | None = None) -> Path:
    """A 16-bit grayscale PNG of ``pixels`` as given (no scaling), with an ``sBIT`` chunk when asked.

    ``sBIT`` is how a PNG declares that fewer bits than its 16 are significant (a 12-bit detector, say).
    """
    info = None
    if significant_bits is not None:
        info = PngImagePlugin.PngInfo()
        info.add(b"sBIT", bytes([significant_bits]))
    Image.fromarray(np.asarray(pixels, dtype=np.uint16)).save(path, format="PNG", pnginfo=info)
    return Path(path)


def write_tiff12(path: str | Path, pixels: np.ndarray) -> Path:
    """An uncompressed little-endian TIFF with BitsPerSample 12 (packed, MSB first), which Pillow cannot write."""
    values = np.asarray(pixels, dtype=np.uint32)
    height, width = values.shape
    if width % 2:
        raise ValueError("write_tiff12 packs two pixels into three bytes: use an even width")
    pairs = values.reshape(height, width // 2, 2)
    packed = np.stack(
        [pairs[..., 0] >> 4, ((pairs[..., 0] & 0xF) << 4) | (pairs[..., 1] >> 8), pairs[..., 1] & 0xFF], axis=-1
    ).astype(np.uint8)
    data = packed.tobytes()
    short, long = 3, 4
    tags = [  # (tag, type, value): width, height, bits, no compression, min-is-black, strip, 1 sample, rows, bytes
        (256, long, width),
        (257, long, height),
        (258, short, 12),
        (259, short, 1),
        (262, short, 1),
        (273, long, 8),
        (277, short, 1),
        (278, long, height),
        (279, long, len(data)),
    ]
    entries = b"".join(
        struct.pack("<HHI", tag, kind, 1)
        + (struct.pack("<HH", value, 0) if kind == short else struct.pack("<I", value))
        for tag, kind, value in tags
    )
    header = b"II*\x00" + struct.pack("<I", 8 + len(data))
    Path(path).write_bytes(header + data + struct.pack("<H", len(tags)) + entries + struct.pack("<I", 0))
    return Path(path)
