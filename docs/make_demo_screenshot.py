"""Draw docs/images/demo.png, the README's picture: the Gradio demo (app.py) analysing a real NIH film.

Serves ``app.py --model MODEL`` on a free 127.0.0.1 port, uploads ``tests/data/00000011_000.png`` in headless
Chromium (Debian's chromium and chromium-driver) and saves a screenshot of the page once the heatmaps are drawn.
MODEL defaults to ``outputs/quickstart``: run the README's quickstart first. The quickstart model is a random-init
ViT-Tiny trained for a minute on 742 tiny films, so its probabilities and heatmaps show what the demo looks like,
not what a trained model finds.

    python docs/make_demo_screenshot.py [--model outputs/quickstart] [--output docs/images/demo.png]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the browser helpers of the demo's own test

from browser import headless_chromium, serve_app  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="outputs/quickstart", help="A cxr-vit model folder (relative to the repo).")
    parser.add_argument("--image", default=str(REPO / "tests" / "data" / "00000011_000.png"), help="The film shown.")
    parser.add_argument("--output", default=str(REPO / "docs" / "images" / "demo.png"))
    args = parser.parse_args()
    if not (REPO / args.model / "config.json").is_file():
        parser.error(f"{args.model} is not a model folder: run the README's quickstart first, or pass --model")

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    log = Path(tempfile.mkdtemp(prefix="cxr_vit_demo_")) / "app.log"
    with serve_app(["--model", args.model], log) as (url, _):
        driver = headless_chromium(window_size="1280,1240")
        try:
            wait = WebDriverWait(driver, 120)
            driver.get(url)
            wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#upload input[type=file]")).send_keys(args.image)
            heatmap = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#heatmap img"))
            wait.until(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", heatmap))
            Path(args.output).parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(args.output)
            print(f"wrote {args.output}")
        finally:
            driver.quit()


if __name__ == "__main__":
    main()
