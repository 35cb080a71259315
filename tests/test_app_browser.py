"""The Gradio demo: upload checks in-process, then end to end in headless Chromium driven by Selenium.

The browser test starts `python app.py` on a free 127.0.0.1 port with a tiny saved model, uploads a real NIH
X-ray and checks what the page renders. It keeps a screenshot in tmp_path and, when CXR_VIT_ARTIFACTS_DIR is
set (CI), a copy there. It skips only when Debian's chromium / chromium-driver are not installed.
"""

import os
import shutil

import gradio as gr
import pytest
from browser import CHROMEDRIVER, CHROMIUM, headless_chromium, serve_app
from conftest import REPO, TEST_DATA
from inference_helpers import load_script
from PIL import Image

from cxr_vit.constants import LABELS

XRAY = TEST_DATA / "00000011_000.png"
ARTIFACTS_ENV = "CXR_VIT_ARTIFACTS_DIR"

pytestmark = pytest.mark.no_hf_floor

app = load_script(REPO / "app.py")


def test_analyse_returns_probabilities_positives_and_heatmap(predictor):
    probabilities, positives, heatmap = app.analyse(predictor, str(XRAY))
    assert set(probabilities) == set(LABELS) and all(0 <= p <= 1 for p in probabilities.values())
    assert "**Effusion**" in positives and "Hernia" not in positives
    assert isinstance(heatmap, Image.Image) and heatmap.size == (4 * 256, 256 + 32)


@pytest.mark.parametrize(
    ("content", "setting", "message"),
    [
        (None, None, "Upload a chest X-ray"),
        (b"just some text", None, "not an image this demo can read"),
        (XRAY.read_bytes()[:1500], None, "could not be decoded"),
        (XRAY.read_bytes(), ("MAX_PIXELS", 10_000), "256x256 pixels: the limit"),
        (XRAY.read_bytes(), ("MAX_FILE_MB", 0.001), "MB: the limit"),
    ],
)
def test_bad_uploads_get_a_clear_message(predictor, tmp_path, monkeypatch, content, setting, message):
    path = None
    if content is not None:
        path = tmp_path / "upload.png"
        path.write_bytes(content)
    if setting:
        monkeypatch.setattr(app, *setting)
    with pytest.raises(gr.Error, match=message):
        app.analyse(predictor, str(path) if path else None)


# ---- the browser ----------------------------------------------------------------------------------------


@pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="needs Debian's chromium and chromedriver: apt-get install -y chromium chromium-driver",
)
def test_demo_end_to_end_in_headless_chromium(model_dir, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with serve_app([], tmp_path / "app.log", {app.MODEL_ENV: str(model_dir)}) as (url, startup):
        print(f"app.py served after {startup:.1f} s")
        driver = headless_chromium()
        try:
            wait = WebDriverWait(driver, 60)
            driver.get(url)

            notice = wait.until(lambda d: d.find_element(By.ID, "notice"))
            assert notice.is_displayed() and "Not for clinical use" in notice.text
            upload = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#upload input[type=file]"))
            upload.send_keys(str(XRAY))
            wait.until(lambda d: "Effusion" in d.find_element(By.ID, "positives").text)

            assert "Positive at the stored thresholds" in driver.find_element(By.ID, "positives").text
            shown = driver.find_element(By.ID, "probabilities").text
            assert all(label in shown for label in LABELS), shown
            heatmap = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#heatmap img"))
            wait.until(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", heatmap))
            assert driver.execute_script("return arguments[0].naturalWidth", heatmap) == 4 * 256  # input + 3 overlays

            screenshot = tmp_path / "demo.png"
            assert driver.save_screenshot(str(screenshot))
            assert Image.open(screenshot).size[0] >= 1000
            if os.environ.get(ARTIFACTS_ENV):
                os.makedirs(os.environ[ARTIFACTS_ENV], exist_ok=True)
                shutil.copy(screenshot, os.path.join(os.environ[ARTIFACTS_ENV], "demo.png"))

            # A broken file gets the app's message, not a stack trace.
            driver.refresh()
            broken = tmp_path / "broken.png"
            broken.write_bytes(XRAY.read_bytes()[:1500])
            wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#upload input[type=file]")).send_keys(str(broken))
            wait.until(lambda d: "broken.png could not be decoded" in d.find_element(By.TAG_NAME, "body").text)
        finally:
            driver.quit()


def test_a_dicom_upload_is_analysed_like_its_png(predictor, tmp_path):
    import numpy as np
    from xray_files import to_bits, write_dicom

    gray = np.asarray(Image.open(XRAY), dtype=np.int64)
    dicom = write_dicom(tmp_path / "1.2.840.113619.2.55.3", 4095 - to_bits(gray, 12), photometric="MONOCHROME1")
    from_png, _, _ = app.analyse(predictor, str(XRAY))
    from_dicom, positives, heatmap = app.analyse(predictor, str(dicom))  # UID-named, no image extension
    assert max(abs(from_png[label] - from_dicom[label]) for label in LABELS) < 1e-6
    assert "**Effusion**" in positives and heatmap.size == (4 * 256, 256 + 32)
    broken = tmp_path / "cut.dcm"
    broken.write_bytes(dicom.read_bytes()[:2000])
    with pytest.raises(gr.Error, match="cut.dcm could not be decoded"):
        app.analyse(predictor, str(broken))
