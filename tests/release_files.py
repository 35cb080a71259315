"""A small copy of the NIH release built from the bundled images, and a loopback HTTP server that serves it.

``mini_release`` lays the mini set out as the release: its PNGs in ``images_001.tar.gz`` ... (members
``images/NNNNNNNN_NNN.png``), the label CSV, the box list and split lists. ``ReleaseServer`` serves a folder over
HTTP on 127.0.0.1 with Range requests (206), and can be told to cut a file's response off after some bytes, as a
dropped connection does.
"""

from __future__ import annotations

import http.server
import re
import threading
from pathlib import Path

from cxr_vit.data.archives import write_archives


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args):  # quiet
        pass

    def do_HEAD(self):
        self._serve(body=False)

    def do_GET(self):
        self._serve(body=True)

    def _serve(self, body: bool):
        path = self.server.root / self.path.lstrip("/").split("?")[0]
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start, status = 0, 200
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        if match and self.server.ranges:
            start, status = int(match.group(1)), 206
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        self.send_response(status)
        self.send_header("Content-Length", str(len(data) - start))
        self.send_header("Accept-Ranges", "bytes" if self.server.ranges else "none")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if not body:
            return
        with self.server.lock:
            self.server.requests.append((path.name, self.headers.get("Range")))
            cut = self.server.drop_after.pop(path.name, None)
        payload = data[start:] if cut is None else data[start : start + cut]
        self.wfile.write(payload)
        with self.server.lock:
            self.server.bytes_sent[path.name] = self.server.bytes_sent.get(path.name, 0) + len(payload)
        if cut is not None:
            self.close_connection = True  # the client sees fewer bytes than Content-Length


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True


class ReleaseServer:
    """``with ReleaseServer(folder) as server:`` files at ``server.url(name)``; ``drop_after[name] = n`` cuts the
    next response for that file after n bytes; ``bytes_sent`` and ``requests`` record what was served."""

    def __init__(self, root: Path, ranges: bool = True):
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.root = Path(root)
        self._server.ranges = ranges
        self._server.lock = threading.Lock()
        self._server.drop_after = {}
        self._server.bytes_sent = {}
        self._server.requests = []
        self.drop_after, self.bytes_sent, self.requests = (
            self._server.drop_after,
            self._server.bytes_sent,
            self._server.requests,
        )

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/{name}"

    def __enter__(self) -> ReleaseServer:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()


def mini_release(root: Path) -> Path:
    """The bundled mini set as a small release in ``root``: 3 archives, the full-format label CSV, the box list,
    and official-style split lists (every fifth patient in test_list.txt)."""
    import pandas as pd
    from conftest import MINI_FULL_CSV, MINI_IMAGES, TEST_DATA

    frame = pd.read_csv(MINI_FULL_CSV, dtype=str, keep_default_na=False)
    write_archives(MINI_IMAGES, sorted(frame["Image Index"]), root, count=3)
    (root / "Data_Entry_2017_v2020.csv").write_bytes(MINI_FULL_CSV.read_bytes())
    (root / "BBox_List_2017.csv").write_bytes((TEST_DATA / "bbox_nih_mini.csv").read_bytes())
    in_test = frame["Patient ID"].astype(int) % 5 == 0
    (root / "test_list.txt").write_text("\n".join(frame["Image Index"][in_test]) + "\n")
    (root / "train_val_list.txt").write_text("\n".join(frame["Image Index"][~in_test]) + "\n")
    return root
