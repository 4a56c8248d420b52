#!/usr/bin/env python3
"""Serves a folder over HTTP on 127.0.0.1 with Range support, as a weights host (an object store,
a CDN) does: `GET` with `Range: bytes=A-B` answers 206 with Content-Range. Used by
scripts/container-test to hand compiled model folders to a container through COG_WEIGHTS.

    weights-server.py ROOT PORT LOG

Every request is appended to LOG as one JSON line: {"path", "range", "status", "bytes"}.
"""
import json
import os
import re
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

root, port, log_path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def record(self, status, sent, rng):
        with lock, open(log_path, "a") as f:
            f.write(json.dumps({"path": self.path, "range": rng, "status": status, "bytes": sent}) + "\n")

    def do_GET(self):
        rel = os.path.normpath(self.path.split("?", 1)[0].lstrip("/"))
        path = os.path.join(root, rel)
        rng = self.headers.get("Range")
        if rel.startswith("..") or not os.path.isfile(path):
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            self.record(404, 0, rng)
            return
        size = os.path.getsize(path)
        start, end, status = 0, size - 1, 200
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng or "")
        if m:
            start = int(m.group(1))
            end = min(int(m.group(2)) if m.group(2) else size - 1, size - 1)
            if start > end:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                self.record(416, 0, rng)
                return
            status = 206
        length = end - start + 1 if size else 0
        self.send_response(status)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(length))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        sent = 0
        with open(path, "rb") as f:
            f.seek(start)
            while sent < length:
                chunk = f.read(min(1 << 20, length - sent))
                if not chunk:
                    break
                self.wfile.write(chunk)
                sent += len(chunk)
        self.record(status, sent, rng)


ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
