"""A small fault-injecting reverse proxy on 127.0.0.1, placed between boto3 and a real S3 server.

boto3 talks to the proxy as its endpoint; the proxy forwards each request unchanged (Host header
included, so SigV4 signatures stay valid) to the upstream server, unless a `Fault` matches:

- ``status``: answer with an S3 error (503 SlowDown / 500 InternalError) without forwarding;
- ``drop_request``: read half of the request body, then close the connection (no response);
- ``drop_response``: forward, send the headers and half of the response body, then close;
- ``corrupt``: flip one byte of the request body before forwarding (the server's checksum
  check must reject it);
- ``slow``: wait ``delay`` seconds, then forward;
- ``hold``: wait until ``gate`` is set (deterministic "upload in flight"), then forward.

Every request is logged as (method, path-with-query) in order; `injected` counts faults used.
"""

from __future__ import annotations

import http.client
import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te",
               "trailer", "upgrade", "expect"}
_CODES = {500: "InternalError", 503: "SlowDown"}


@dataclass
class Fault:
    action: str
    method: str | None = None
    path: str | None = None  # regex searched in "path?query"
    times: int | None = 1  # None: every matching request
    status: int = 503
    delay: float = 0.0
    gate: threading.Event | None = None
    matched: threading.Event = field(default_factory=threading.Event)

    def matches(self, method: str, path: str) -> bool:
        if self.times is not None and self.times <= 0:
            return False
        if self.method is not None and self.method != method:
            return False
        return self.path is None or re.search(self.path, path) is not None


class FaultProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.faults: list[Fault] = []
        self.requests: list[tuple[str, str]] = []
        self.answered: list[tuple[str, str, int]] = []  # forwarded requests and their status
        self.injected = 0
        self.lock = threading.Lock()
        self.answered_changed = threading.Condition(self.lock)
        proxy = self

        class Handler(_ProxyHandler):
            owner = proxy

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> FaultProxy:
        self.thread.start()
        return self

    def stop(self) -> None:
        for fault in self.faults:
            if fault.gate is not None:
                fault.gate.set()
        self.server.shutdown()
        self.server.server_close()

    def add(self, fault: Fault) -> Fault:
        with self.lock:
            self.faults.append(fault)
        return fault

    def wait_answered(self, method: str, path: str, timeout: float) -> bool:
        """Wait until a forwarded request matching `path` (regex) got a 2xx answer upstream."""
        def seen() -> bool:
            return any(m == method and re.search(path, p) and 200 <= s < 300
                       for m, p, s in self.answered)

        with self.answered_changed:
            return self.answered_changed.wait_for(seen, timeout=timeout)

    def record_answer(self, method: str, path: str, status: int) -> None:
        with self.answered_changed:
            self.answered.append((method, path, status))
            self.answered_changed.notify_all()

    def take_fault(self, method: str, path: str) -> Fault | None:
        with self.lock:
            self.requests.append((method, path))
            for fault in self.faults:
                if fault.matches(method, path):
                    if fault.times is not None:
                        fault.times -= 1
                    self.injected += 1
                    fault.matched.set()
                    return fault
        return None


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    owner: FaultProxy

    def log_message(self, format: str, *args: object) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:
        self._handle()

    do_PUT = do_POST = do_DELETE = do_HEAD = do_GET

    def _handle(self) -> None:
        if self.headers.get("Transfer-Encoding"):
            self._send_error_response(501, "NotImplemented")
            return
        length = int(self.headers.get("Content-Length") or 0)
        fault = self.owner.take_fault(self.command, self.path)
        action = fault.action if fault else None
        if action == "drop_request":
            self.rfile.read(length // 2)
            self._drop()
            return
        body = self.rfile.read(length) if length else b""
        if action == "status":
            assert fault is not None
            self._send_error_response(fault.status, _CODES.get(fault.status, "InternalError"))
            return
        if action == "corrupt" and body:
            middle = len(body) // 2
            body = body[:middle] + bytes([body[middle] ^ 0xFF]) + body[middle + 1:]
        if action == "slow":
            assert fault is not None
            threading.Event().wait(fault.delay)  # the injected latency itself
        if action == "hold":
            assert fault is not None and fault.gate is not None
            fault.gate.wait(60)
        status, reason, headers, payload = self._forward(body)
        self.owner.record_answer(self.command, self.path, status)
        self.send_response_only(status, reason)
        for name, value in headers:
            self.send_header(name, value)
        if action == "drop_response" and payload:
            self.end_headers()
            self.wfile.write(payload[: len(payload) // 2])
            self.wfile.flush()
            self._drop()
            return
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _forward(self, body: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
        upstream = http.client.HTTPConnection("127.0.0.1", self.owner.upstream_port, timeout=60)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            upstream.request(self.command, self.path, body=body or None, headers=headers)
            response = upstream.getresponse()
            payload = response.read()
            out = [(k, v) for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP]
            if self.command != "HEAD" and not any(k.lower() == "content-length" for k, _ in out):
                out.append(("Content-Length", str(len(payload))))
            return response.status, response.reason, out, payload
        finally:
            upstream.close()

    def _send_error_response(self, status: int, code: str) -> None:
        body = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
                f"<Message>injected by the test proxy</Message></Error>").encode()
        self.send_response_only(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _drop(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
