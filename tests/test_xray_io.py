"""X-ray file reading: DICOM and high-bit-depth PNG/TIFF made from a real NIH image must decode back to it.

Every file here is written from ``00000011_000.png`` (256x256, 8-bit) with stored values chosen so that a correct
reader returns the original grey levels. The stored values are ``round(g * (2**bits - 1) / 255)``, a quantisation
error of at most half a stored unit (0.03 grey levels at 12 bits), so a correct decode differs only by the final
rounding: the tolerance is +-1 grey level, and the decodes measured exact (0) when this was written.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom import uid
from pydicom.pixels import get_decoder
from xray_files import to_bits, write_dicom, write_png16, write_structured_report, write_tiff12

from cxr_vit.data.images import (
    PERCENTILE_WINDOW,
    DicomReadError,
    XrayReadError,
    is_dicom,
    is_xray_file,
    load_xray,
    read_xray,
    to_grayscale_uint8,
    xray_size,
)
from cxr_vit.data.nih import index_images
from cxr_vit.prediction import UnreadableImageError, find_images, read_image

TEST_DATA = Path(__file__).resolve().parent / "data"
XRAY = TEST_DATA / "00000011_000.png"
with Image.open(XRAY) as _image:
    ORIGINAL = np.asarray(_image, dtype=np.int64)  # mode L, 0..246
G12 = to_bits(ORIGINAL, 12)
INVERTING_LUT_16 = np.rint((4095 - np.arange(4096)) * (65535 / 4095)).astype(np.int64)  # 16-bit entries


def max_difference(image: Image.Image) -> int:
    assert image.mode == "L" and image.size == (256, 256)
    return int(np.abs(np.asarray(image, dtype=np.int64) - ORIGINAL).max())


# name -> (stored pixels, write_dicom options). Each is built so that only a reader applying that step right
# gets the original back (e.g. the VOI LUTs invert, so ignoring them would give a negative).
DICOM_VARIANTS = {
    "MONOCHROME2 12-bit": (G12, {}),
    "MONOCHROME1 12-bit": (4095 - G12, {"photometric": "MONOCHROME1"}),
    # rescaled range [0 * 2 - 1024, 4095 * 2 - 1024]: the Bits Stored range, rescaled, maps back to 0..255
    "rescale slope 2, intercept -1024": (G12, {"slope": 2, "intercept": -1024}),
    # stored 600 + 8g -> rescaled 176 + 16g; the window is in rescaled units, so rescale must come first
    "rescale then window": (
        (600 + 8 * ORIGINAL).astype(np.uint16),
        {"slope": 2, "intercept": -1024, "window": (2216.5, 4081)},
    ),
    # LINEAR: ((x - (c - 0.5)) / (w - 1) + 0.5) * 255 maps 1000 + 8g back to g
    "window LINEAR": ((1000 + 8 * ORIGINAL).astype(np.uint16), {"window": (2020.5, 2041)}),
    "window LINEAR_EXACT": (
        (1000 + 8 * ORIGINAL).astype(np.uint16),
        {"window": (2020, 2040), "voi_function": "LINEAR_EXACT"},
    ),
    "VOI LUT 16-bit": (4095 - G12, {"voi_lut": (INVERTING_LUT_16, 0, 16)}),
    # declares 16 bits per entry but holds 12-bit values: read as 0..4095, not as a nearly black 0..65535
    "VOI LUT declared 16, data 12": (4095 - G12, {"voi_lut": (4095 - np.arange(4096), 0, 16)}),
    "Modality LUT 16-bit": (4095 - G12, {"modality_lut": (INVERTING_LUT_16, 0, 16)}),
    "signed 12-bit": ((G12.astype(np.int16) - 2048), {}),
    "8-bit": (ORIGINAL.astype(np.uint8), {"bits_stored": 8}),
    "CR Image Storage": (G12, {"sop_class": uid.ComputedRadiographyImageStorage}),
    "Implicit VR Little Endian": (G12, {"transfer_syntax": uid.ImplicitVRLittleEndian}),
    "Explicit VR Big Endian": (G12, {"transfer_syntax": uid.ExplicitVRBigEndian}),
    "Deflated Explicit VR Little Endian": (G12, {"transfer_syntax": uid.DeflatedExplicitVRLittleEndian}),
    "RLE Lossless": (G12, {"transfer_syntax": uid.RLELossless}),
    "JPEG 2000 Lossless (Pillow)": (G12, {"transfer_syntax": uid.JPEG2000Lossless}),
}


@pytest.mark.parametrize("variant", list(DICOM_VARIANTS))
def test_dicom_decodes_to_the_8bit_original(tmp_path, variant):
    pixels, options = DICOM_VARIANTS[variant]
    path = write_dicom(tmp_path / "image.dcm", pixels, **options)
    assert max_difference(read_xray(path)) <= 1


@pytest.mark.parametrize("bits_stored", [14, 15, 16])
@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_12bit_data_declared_wider_without_a_window_uses_the_pixels_range(tmp_path, bits_stored, photometric):
    """12-bit values stored as Bits Stored 14-16 with a rescale intercept and no window: windowed from the pixels.

    The declared range (0..65535 for 16) would leave the film nearly black; the pixels' own range (the original's
    0..246, no outliers) maps it back, stretched by 255/246: within 9 grey levels (0.035) of the 8-bit PNG.
    """
    stored = G12 if photometric == "MONOCHROME2" else 4095 - G12
    path = write_dicom(tmp_path / "wide.dcm", stored, bits_stored=bits_stored, photometric=photometric, slope=1,
                       intercept=-1024)  # fmt: skip
    decoded = np.asarray(read_xray(path), dtype=np.int64)
    stretched = np.floor(ORIGINAL * (255 / ORIGINAL.max()) + 0.5)
    assert np.abs(decoded - stretched).max() <= 1
    assert np.abs(decoded - ORIGINAL).mean() / 255 < 0.03


def test_outliers_in_a_dicom_without_a_window_get_the_png_percentile_window(tmp_path):
    """A burned-in marker at full scale in 12-bit data stored as 16 bits: windowed like the same 16-bit PNG."""
    hot = G12.copy()
    hot[:4, :4] = 65535
    dicom = read_xray(write_dicom(tmp_path / "hot.dcm", hot, bits_stored=16, slope=1, intercept=-1024))
    png = read_xray(write_png16(tmp_path / "hot.png", hot))
    assert np.abs(np.asarray(dicom, dtype=np.int64) - np.asarray(png, dtype=np.int64)).max() <= 1
    assert np.abs(np.asarray(dicom, dtype=np.float64) - ORIGINAL)[4:, 4:].mean() < 15  # not black


@pytest.mark.parametrize(
    ("transfer_syntax", "pixels", "bits"),
    [(uid.JPEGBaseline8Bit, ORIGINAL.astype(np.uint8), 8), (uid.JPEG2000, G12, 12)],
    ids=["JPEG Baseline 8-bit", "JPEG 2000 lossy 12-bit"],
)
def test_lossy_dicom_decodes_within_compression_error(tmp_path, transfer_syntax, pixels, bits):
    path = write_dicom(tmp_path / "lossy.dcm", pixels, bits_stored=bits, transfer_syntax=transfer_syntax)
    decoded = np.asarray(read_xray(path), dtype=np.int64)
    assert np.abs(decoded - ORIGINAL).mean() < 1.0  # Pillow-decoded, as pydicom does with no extra package


def test_sigmoid_window_is_centred_and_monotonic(tmp_path):
    path = write_dicom(
        tmp_path / "sigmoid.dcm", (1000 + 8 * ORIGINAL).astype(np.uint16), window=(2024, 2040), voi_function="SIGMOID"
    )
    decoded = np.asarray(read_xray(path), dtype=np.int64)
    assert set(decoded[ORIGINAL == 128].tolist()) == {128}  # the center maps to mid-grey (127.5, rounded up)
    order = np.argsort(ORIGINAL, axis=None, kind="stable")
    assert np.all(np.diff(decoded.ravel()[order]) >= 0)


@pytest.mark.parametrize("name", ["IM000001", "1.2.826.0.1.3680043.8.498.12345"])
def test_dicom_is_recognised_by_content_whatever_its_name(tmp_path, name):
    path = write_dicom(tmp_path / name, G12)
    assert is_dicom(path) and is_xray_file(path) and not is_dicom(XRAY)
    assert max_difference(read_xray(path)) <= 1
    assert max_difference(read_image(path)) <= 1  # the prediction entry point too
    assert xray_size(path) == (256, 256)


def test_load_xray_shrinks_dicom(tmp_path):
    path = write_dicom(tmp_path / "image.dcm", G12)
    assert load_xray(path, image_size=64).size == (64, 64)


@pytest.mark.parametrize(
    ("stored", "sbit"),
    [
        (G12, 12),  # raw 12-bit values, sBIT 12: what DICOM exporters write
        (G12 << 4, 12),  # PNG-spec scaled-up samples (left shift), sBIT 12
        (ORIGINAL.astype(np.uint16) * 257, None),  # 8-bit widened by bit replication (Pillow, libpng)
        (ORIGINAL.astype(np.uint16), None),  # 8-bit values written unscaled into 16 bits
    ],
    ids=["raw-12-bit-sBIT", "shifted-12-bit-sBIT", "8-bit-replicated", "8-bit-unscaled"],
)
def test_16bit_png_with_known_depth_equals_the_original(tmp_path, stored, sbit):
    path = write_png16(tmp_path / "sixteen.png", stored, significant_bits=sbit)
    with Image.open(path) as image:
        assert image.mode == "I;16"
    assert max_difference(read_xray(path)) <= 1


def test_12bit_tiff_uses_its_bits_per_sample(tmp_path):
    path = write_tiff12(tmp_path / "twelve.tif", G12)
    assert max_difference(read_xray(path)) <= 1


def test_16bit_png_without_depth_gets_a_percentile_window(tmp_path):
    decoded = np.asarray(read_xray(write_png16(tmp_path / "raw12.png", G12)), dtype=np.float64)
    # The 0.5th..99.5th percentile window stretches the original's 0..236 (its own percentiles) to 0..255.
    assert PERCENTILE_WINDOW == (0.5, 99.5)
    assert abs(decoded.mean() - ORIGINAL.mean()) < 15  # not black: 131 vs 122
    assert np.percentile(decoded, 99.5) >= 250 and np.percentile(decoded, 0.5) <= 5
    assert np.corrcoef(decoded.ravel(), ORIGINAL.ravel())[0, 1] > 0.999
    # A few hot pixels (a burned-in marker at full scale) do not move the window.
    hot = G12.copy()
    hot[:4, :4] = 65535
    with_hot = np.asarray(read_xray(write_png16(tmp_path / "hot.png", hot)), dtype=np.float64)
    assert np.abs(with_hot - decoded)[4:, 4:].max() <= 1


@pytest.mark.parametrize(
    ("suffix", "mode"), [(".png", "L"), (".png", "LA"), (".png", "P"), (".tif", "L"), (".bmp", "RGB")]
)
def test_8bit_files_read_back_exactly(tmp_path, suffix, mode):
    path = tmp_path / f"image{suffix}"
    Image.fromarray(ORIGINAL.astype(np.uint8)).convert(mode).save(path)
    assert max_difference(read_xray(path)) == 0


def test_8bit_jpeg_reads_within_jpeg_error(tmp_path):
    Image.fromarray(ORIGINAL.astype(np.uint8)).convert("RGB").save(tmp_path / "image.jpg", quality=95)
    assert np.abs(np.asarray(read_xray(tmp_path / "image.jpg"), dtype=np.int64) - ORIGINAL).mean() < 1.0


def test_in_memory_high_depth_images_follow_the_same_rules():
    assert max_difference(to_grayscale_uint8(Image.fromarray(G12), significant_bits=12)) == 0
    assert max_difference(to_grayscale_uint8(Image.fromarray(ORIGINAL.astype(np.float32)))) == 0  # F in 0..255
    assert max_difference(to_grayscale_uint8(Image.fromarray(ORIGINAL.astype(np.int32)))) == 0  # I in 0..255


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P", "LA"])
def test_8bit_modes_convert_as_before(mode):
    image = Image.fromarray(ORIGINAL.astype(np.uint8)).convert(mode)
    gray = to_grayscale_uint8(image)
    if mode == "L":
        assert gray is image
    else:
        assert np.array_equal(np.asarray(gray), np.asarray(image.convert("L")))


def _bad_files(folder: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, a phrase its error message must contain)."""
    good = write_dicom(folder / "good.dcm", G12).read_bytes()
    rgb = np.stack([ORIGINAL] * 3, axis=-1).astype(np.uint8)
    files = {
        "multi-frame": (write_dicom(folder / "cine.dcm", np.stack([G12, G12])), "multi-frame DICOM (2 frames)"),
        "colour": (write_dicom(folder / "colour.dcm", rgb, bits_stored=8, photometric="RGB"), "colour DICOM"),
        "structured report": (write_structured_report(folder / "report.dcm"), "Basic Text SR Storage"),
        "JPEG Lossless, no decoder": (
            write_dicom(folder / "lossless.dcm", G12, transfer_syntax=uid.JPEGLosslessSV1),
            "JPEG Lossless, Non-Hierarchical, First-Order Prediction (Process 14 [Selection Value 1]) "
            "(1.2.840.10008.1.2.4.70) and no decoder for it is installed",
        ),
        "JPEG-LS, no decoder": (
            write_dicom(folder / "jpegls.dcm", G12, transfer_syntax=uid.JPEGLSLossless),
            "JPEG-LS Lossless Image Compression (1.2.840.10008.1.2.4.80) and no decoder for it is installed",
        ),
        "truncated in header": (folder / "cut_header", "ends before its Pixel Data"),
        "truncated in pixels": (folder / "cut_pixels.dcm", "truncated"),
        ".dcm without DICOM header": (folder / "notes.dcm", "no DICOM header"),
        "zero-byte PNG": (folder / "empty.png", "not an image file"),
        "text named .png": (folder / "text.png", "not an image file"),
        "truncated PNG": (folder / "truncated.png", "truncated or corrupt"),
        "missing": (folder / "missing.png", "no such file"),
    }
    (folder / "cut_header").write_bytes(good[:400])  # extensionless: still recognised by its DICM marker
    (folder / "cut_pixels.dcm").write_bytes(good[: len(good) // 2])
    (folder / "notes.dcm").write_text("not a DICOM file")
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.png").write_text("this is a note, not an image")
    (folder / "truncated.png").write_bytes(XRAY.read_bytes()[:1500])
    return files


def test_bad_files_raise_one_error_type_naming_the_file(tmp_path):
    lossless_available = get_decoder(uid.JPEGLosslessSV1).is_available
    jpegls_available = get_decoder(uid.JPEGLSLossless).is_available
    for what, (path, phrase) in _bad_files(tmp_path).items():
        if (what == "JPEG Lossless, no decoder" and lossless_available) or (
            what == "JPEG-LS, no decoder" and jpegls_available
        ):
            continue  # a decoder is installed here: nothing to refuse
        with pytest.raises(XrayReadError) as caught:
            read_xray(path)
        message = str(caught.value)
        assert isinstance(caught.value, ValueError), what
        assert str(path) in message and phrase in message, f"{what}: {message}"
        if path.suffix == ".dcm" or path.name == "cut_header":
            assert isinstance(caught.value, DicomReadError), what
        with pytest.raises(UnreadableImageError, match=path.name):
            read_image(path)
    if not lossless_available:
        with pytest.raises(DicomReadError, match="pip install 'pylibjpeg>=2.0' 'pylibjpeg-libjpeg>=2.1'"):
            read_xray(tmp_path / "lossless.dcm")


def test_dicom_larger_than_pillows_bomb_limit_is_refused(tmp_path, monkeypatch):
    path = write_dicom(tmp_path / "image.dcm", G12)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(DicomReadError, match="256x256 pixels exceeds the 2000 pixel limit"):
        read_xray(path)


def test_index_and_find_pick_up_dicom_by_extension_and_content(tmp_path):
    folder = tmp_path / "images"
    (folder / "nested").mkdir(parents=True)
    (folder / "a.png").write_bytes(XRAY.read_bytes())
    write_dicom(folder / "b.dcm", G12)
    write_dicom(folder / "c.DICOM", G12)
    write_dicom(folder / "nested" / "IM0001", G12)
    write_dicom(folder / "nested" / "1.2.3.4.5", G12)
    (folder / "notes.txt").write_text("not an image")
    (folder / "README").write_text("no extension and not DICOM")
    expected = ["1.2.3.4.5", "IM0001", "a.png", "b.dcm", "c.DICOM"]
    assert sorted(index_images(folder)) == expected
    assert sorted(path.name for path in find_images([folder])) == expected
    for path in find_images([folder]):
        assert max_difference(read_image(path)) <= 1
