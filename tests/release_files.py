"""A small copy of the NIH release built from the bundled images, and a loopback HTTP server that serves it.

``mini_release`` lays the mini set out as the release: its PNGs in ``images_001.tar.gz`` ... (members
``images/NNNNNNNN_NNN.png``), the label CSV, the box list and split lists. ``ReleaseServer`` serves a folder over
HTTP on 127.0.0.1 with Range requests (206) and validators (ETag, Last-Modified, If-Range), and can be told to
cut a file's response off after some bytes (a clean close, or a TCP reset), to leave out Content-Length, to ignore
Range, or to answer with an error status and Retry-After.
"""

from __future__ import annotations

import email.utils
import fcntl
import hashlib
import http.server
import re
import socket
import struct
import termios
import threading
import time
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
        name = self.path.lstrip("/").split("?")[0]
        path = self.server.root / name
        if body:
            with self.server.lock:
                self.server.log.append(
                    {"name": name, "range": self.headers.get("Range"), "if_range": self.headers.get("If-Range"),
                     "time": time.monotonic()}
                )  # fmt: skip
                failures = self.server.fail.get(name)
                failure = failures.pop(0) if failures else None
            if failure is not None:
                code, retry_after = failure
                self.send_response(code)
                if retry_after is not None:
                    self.send_header("Retry-After", retry_after)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        etag = f'"{hashlib.sha256(data).hexdigest()[:16]}"'
        modified = email.utils.formatdate(path.stat().st_mtime, usegmt=True)
        start, status = 0, 200
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        # If-Range: the range is served only while the file is the one the client's bytes came from (RFC 9110)
        current = self.headers.get("If-Range") in (None, etag, modified)
        if match and self.server.ranges and current:
            start, status = int(match.group(1)), 206
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        self.send_response(status)
        if self.server.lengths:
            self.send_header("Content-Length", str(len(data) - start))
        self.send_header("Accept-Ranges", "bytes" if self.server.ranges else "none")
        self.send_header("ETag", etag)
        self.send_header("Last-Modified", modified)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if not body:
            return
        with self.server.lock:
            self.server.requests.append((path.name, self.headers.get("Range")))
            cut = self.server.drop_after.pop(path.name, None)
            reset = self.server.reset_every.get(path.name)
        payload = data[start:] if cut is None else data[start : start + cut]
        if reset is not None:
            payload = payload[:reset]
        self.wfile.write(payload)
        with self.server.lock:
            self.server.bytes_sent[path.name] = self.server.bytes_sent.get(path.name, 0) + len(payload)
        if reset is not None and start + len(payload) < len(data):
            self._reset()
        elif cut is not None:
            self.close_connection = True  # the client sees fewer bytes than Content-Length

    def _reset(self):
        """End the connection with a TCP reset (RST), as a dropped link or a killed proxy does, once the client's
        side has every byte sent (a reset discards what is still in the sender's queue)."""
        sock = self.connection
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            unsent = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]
            if unsent == 0:
                break
            time.sleep(0.002)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.rfile.close()
        self.wfile.close()
        sock.close()
        self.close_connection = True


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True


class ReleaseServer:
    """``with ReleaseServer(folder) as server:`` files at ``server.url(name)``, with ETag / Last-Modified and
    Range / If-Range. ``ranges=False``: Range ignored; ``lengths=False``: no Content-Length (the body ends when
    the connection closes). ``drop_after[name] = n`` cuts the next response for that file after n bytes (a clean
    close); ``reset_every[name] = n`` ends every response for it after n bytes with a TCP reset;
    ``fail[name] = [(status, retry_after), ...]`` answers the next requests with those statuses. ``bytes_sent``,
    ``requests`` and ``log`` (each GET's name, Range, If-Range and monotonic time) record what was asked and sent."""

    def __init__(self, root: Path, ranges: bool = True, lengths: bool = True):
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.root = Path(root)
        self._server.ranges = ranges
        self._server.lengths = lengths
        self._server.lock = threading.Lock()
        self.drop_after = self._server.drop_after = {}
        self.reset_every = self._server.reset_every = {}
        self.fail = self._server.fail = {}
        self.bytes_sent = self._server.bytes_sent = {}
        self.requests = self._server.requests = []
        self.log = self._server.log = []

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/{name}"

    def __enter__(self) -> ReleaseServer:
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
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
