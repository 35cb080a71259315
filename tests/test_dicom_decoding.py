"""Every common DICOM transfer syntax, compressed by the tools PACS vendors and archives use (dcmtk, gdcm), decodes
with the core install to the pixels of the uncompressed file: exactly for the lossless syntaxes, within the declared
bound for JPEG-LS near-lossless, within a small error for the lossy ones.

The known pixels are a real NIH film (``00000011_000.png``) spread over 12 and 16 bits with deterministic noise in
the low bits, so every bit plane carries data. Decoded values are compared twice: the stored values pydicom returns,
and the 8-bit film the package's own reader (:func:`cxr_vit.data.images.read_xray`) makes of them.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom import uid
from xray_files import write_dicom

from cxr_vit.data.images import read_xray

pytestmark = pytest.mark.no_hf_floor

XRAY = Path(__file__).resolve().parent / "data" / "00000011_000.png"
DEBIAN_PACKAGE = {"dcmcjpeg": "dcmtk", "dcmcjpls": "dcmtk", "dcmcrle": "dcmtk", "dcmconv": "dcmtk"}
DEBIAN_PACKAGE["gdcmconv"] = "libgdcm-tools"

# name -> (bits stored, command before "input output", transfer syntax it must produce, max stored-value error)
# A max error of None marks a lossy syntax: checked against LOSSY_* below instead.
CASES = {
    "dcmtk JPEG Lossless SV1 12-bit": (12, ["dcmcjpeg", "+e1"], uid.JPEGLosslessSV1, 0),
    "dcmtk JPEG Lossless SV1 16-bit": (16, ["dcmcjpeg", "+e1"], uid.JPEGLosslessSV1, 0),
    "dcmtk JPEG Lossless Process 14 12-bit": (12, ["dcmcjpeg", "+el"], uid.JPEGLossless, 0),
    "dcmtk JPEG Lossless Process 14 16-bit": (16, ["dcmcjpeg", "+el"], uid.JPEGLossless, 0),
    "dcmtk JPEG Extended 12-bit (lossy)": (12, ["dcmcjpeg", "+ee"], uid.JPEGExtended12Bit, None),
    "dcmtk JPEG Baseline 8-bit (lossy)": (8, ["dcmcjpeg", "+eb"], uid.JPEGBaseline8Bit, None),
    "dcmtk JPEG-LS lossless 12-bit": (12, ["dcmcjpls"], uid.JPEGLSLossless, 0),
    "dcmtk JPEG-LS lossless 16-bit": (16, ["dcmcjpls"], uid.JPEGLSLossless, 0),
    "dcmtk JPEG-LS near-lossless 12-bit, NEAR=3": (12, ["dcmcjpls", "+en", "+md", "3"], uid.JPEGLSNearLossless, 3),
    "dcmtk RLE 12-bit": (12, ["dcmcrle"], uid.RLELossless, 0),
    "dcmtk RLE 16-bit": (16, ["dcmcrle"], uid.RLELossless, 0),
    "dcmtk deflated 12-bit": (12, ["dcmconv", "+td"], uid.DeflatedExplicitVRLittleEndian, 0),
    "gdcm JPEG 2000 lossless 12-bit": (12, ["gdcmconv", "--j2k"], uid.JPEG2000Lossless, 0),
    "gdcm JPEG 2000 lossless 16-bit": (16, ["gdcmconv", "--j2k"], uid.JPEG2000Lossless, 0),
    "gdcm JPEG 2000 lossy 12-bit": (12, ["gdcmconv", "--j2k", "--lossy", "-r", "10"], uid.JPEG2000, None),
    "gdcm JPEG-LS lossless 12-bit": (12, ["gdcmconv", "--jpegls"], uid.JPEGLSLossless, 0),
    "gdcm JPEG Lossless 12-bit": (12, ["gdcmconv", "--jpeg"], uid.JPEGLosslessSV1, 0),
}
# Lossy syntaxes (dcmtk's default quality, JPEG 2000 at 10:1): the mean stored-value error as a share of the
# stored range, and the 8-bit film's mean and largest error in grey levels. Measured when this was written:
# JPEG Extended 12-bit 0.07% / 0.19 / 1, JPEG Baseline 0.35% / 0.89 / 12, JPEG 2000 10:1 0.25% / 0.63 / 5.
LOSSY_MEAN_ERROR = 0.01
LOSSY_MEAN_GREY_LEVELS = 1.0
LOSSY_MAX_GREY_LEVELS = 16


def known_pixels(bits: int) -> np.ndarray:
    """The NIH film's grey levels in the top 8 bits, seeded noise in the bits below them."""
    grey = np.asarray(Image.open(XRAY), dtype=np.int64)
    if bits == 8:
        return grey.astype(np.uint8)
    step = 2 ** (bits - 8)
    noise = np.random.default_rng(bits).integers(0, step, grey.shape)
    return np.clip(grey * step + noise, 0, 2**bits - 1).astype(np.uint16)


@pytest.fixture(scope="module")
def uncompressed(tmp_path_factory) -> dict[int, Path]:
    folder = tmp_path_factory.mktemp("uncompressed")
    return {bits: write_dicom(folder / f"{bits}.dcm", known_pixels(bits), bits_stored=bits) for bits in (8, 12, 16)}


@pytest.mark.parametrize("case", list(CASES))
def test_compressed_files_decode_to_the_uncompressed_pixels(case, uncompressed, tmp_path):
    bits, command, syntax, max_error = CASES[case]
    if shutil.which(command[0]) is None:
        pytest.skip(f"{command[0]} is not installed (Debian package {DEBIAN_PACKAGE[command[0]]}; .ci/run installs it)")
    source, compressed = uncompressed[bits], tmp_path / "compressed.dcm"
    subprocess.run([*command, str(source), str(compressed)], check=True, capture_output=True)
    assert pydicom.dcmread(compressed, stop_before_pixels=True).file_meta.TransferSyntaxUID == syntax

    expected = pydicom.dcmread(source).pixel_array.astype(np.int64)
    decoded = pydicom.dcmread(compressed).pixel_array.astype(np.int64)
    error = np.abs(decoded - expected)
    film, expected_film = (np.asarray(read_xray(path), dtype=np.int64) for path in (compressed, source))
    film_error = np.abs(film - expected_film)
    if max_error == 0:
        assert error.max() == 0 and film_error.max() == 0, case
    elif max_error is not None:  # near-lossless: the bound the encoder was given, and at most 1 grey level
        assert error.max() <= max_error and film_error.max() <= 1, case
    else:
        assert 0 < error.mean() <= LOSSY_MEAN_ERROR * (2**bits - 1), case
        assert film_error.mean() <= LOSSY_MEAN_GREY_LEVELS and film_error.max() <= LOSSY_MAX_GREY_LEVELS, case


# A fresh interpreter in which pylibjpeg and pylibjpeg-libjpeg cannot be imported: as if they were not installed.
_WITHOUT_LIBJPEG = """
import importlib.abc, sys
class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("libjpeg", "pylibjpeg"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, NotInstalled())
from cxr_vit.data.images import XrayReadError, read_xray
try:
    read_xray(sys.argv[1])
except XrayReadError as err:
    print(err)
"""


def test_a_missing_decoder_is_named_with_the_packages_that_provide_it(uncompressed, tmp_path):
    if shutil.which("dcmcjpeg") is None:
        pytest.skip("dcmcjpeg is not installed (Debian package dcmtk; .ci/run installs it)")
    compressed = tmp_path / "lossless.dcm"
    subprocess.run(["dcmcjpeg", "+e1", str(uncompressed[12]), str(compressed)], check=True, capture_output=True)
    result = subprocess.run(
        [sys.executable, "-c", _WITHOUT_LIBJPEG, str(compressed)], capture_output=True, text=True, check=True
    )
    assert f"{compressed}: compressed with transfer syntax JPEG Lossless" in result.stdout
    assert "no decoder for it is installed" in result.stdout
    assert "pip install 'pylibjpeg>=2.0' 'pylibjpeg-libjpeg>=2.1'" in result.stdout
