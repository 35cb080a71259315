"""Headless Chromium for the demo: Debian's chromium and chromedriver driven by Selenium.

Shared by the demo's browser test and ``docs/make_demo_screenshot.py``, which draws the README's picture.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_serving(server: subprocess.Popen, url: str, log_path, timeout: float = 180.0) -> float:
    """Seconds until the app answers ``url``; fails with the app's output if it dies or never answers."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if server.poll() is not None:
            raise RuntimeError(f"app.py exited with {server.returncode}:\n{log_path.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return time.monotonic() - start
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"app.py did not answer {url} within {timeout:.0f} s:\n{log_path.read_text()}")


@contextlib.contextmanager
def serve_app(app_args: list[str], log_path: Path, env: dict[str, str] | None = None) -> Iterator[tuple[str, float]]:
    """``python app.py *app_args`` on a free 127.0.0.1 port: yields (its URL, seconds until it answered); stopped
    on exit. Its output goes to ``log_path``, which is shown if it dies or never answers."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1", **(env or {})}
    command = [sys.executable, "app.py", *app_args, "--host", "127.0.0.1", "--port", str(port)]
    with open(log_path, "w") as log:
        server = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield url, wait_until_serving(server, url, log_path)
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


def headless_chromium(window_size: str = "1280,1300"):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    # --no-sandbox: CI runs as root; --disable-dev-shm-usage: small /dev/shm in containers.
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size={window_size}"):
        options.add_argument(argument)
    # An explicit driver path: Selenium Manager would otherwise try to download one.
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
