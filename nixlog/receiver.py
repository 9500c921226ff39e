"""A small local HTTP endpoint that accepts nixlog batches.

``nixlog demo`` runs one in-process so the whole conveyor belt works without a network; the test
suite builds its switchable failure receiver on it. Standard library only
(``http.server.ThreadingHTTPServer``): it accepts ``POST``ed batches of
``api_client.transform_for_api``, checks the key, gunzips ``Content-Encoding: gzip`` bodies,
deduplicates on each reading's ``id`` (the at-least-once contract of ARCHITECTURE.md: Identity) and
counts what it received.

Override ``Receiver.handle`` to change how a request is answered.
"""

from __future__ import annotations

import gzip
import hmac
import json
import logging
import ssl
import threading
import time
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Final

log = logging.getLogger(__name__)


class _QuietServer(ThreadingHTTPServer):
    """A client that hangs up mid-request (a post abandoned at a stop deadline) is one log
    line, not socketserver's traceback on stderr (the demo's terminal)."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("client %s went away mid-request", client_address, exc_info=True)

DEFAULT_PATH: Final = "/v1/data"
MAX_BODY_BYTES: Final = 64 * 1024 * 1024


@dataclass(frozen=True)
class ReceivedRequest:
    """One request as it arrived: headers (lower-case names), raw and decoded body.

    ``payload`` is the parsed JSON document, or None when the body was not valid JSON;
    ``problem`` says why (one line) when it is None.
    """

    method: str
    path: str
    headers: dict[str, str]
    raw_body: bytes
    body: bytes
    payload: Any
    problem: str | None
    received_at: float

    @property
    def reading_ids(self) -> list[str]:
        """The ``id`` of every reading in the batch (empty when the body is unusable)."""
        if not isinstance(self.payload, dict):
            return []
        readings = self.payload.get("readings")
        if not isinstance(readings, list):
            return []
        return [r["id"] for r in readings if isinstance(r, dict) and isinstance(r.get("id"), str)]


@dataclass(frozen=True)
class Reply:
    """How to answer a request."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, status: int, document: Any, headers: dict[str, str] | None = None) -> Reply:
        """A JSON reply."""
        merged = {"Content-Type": "application/json", **(headers or {})}
        return cls(status, json.dumps(document).encode(), merged)


@dataclass
class ReceiverStats:
    """Counters since start: ``received`` counts every reading, ``unique`` distinct ids."""

    requests: int = 0
    batches: int = 0
    received: int = 0
    unique: int = 0
    duplicates: int = 0
    refused: int = 0


class Receiver:
    """A threaded HTTP server on ``host:port`` (port 0: any free port) accepting batches.

    ``api_key`` None accepts any caller; otherwise the key must arrive in ``key_header``
    (``Authorization: Bearer <key>``, or the raw key in another header). ``max_batch`` answers
    413 to larger batches. ``keep_readings`` False keeps only ids (a long demo stays small).
    ``ssl_context`` (a server context with a certificate loaded) serves HTTPS.
    """

    def __init__(
        self,
        api_key: str | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        path: str = DEFAULT_PATH,
        key_header: str = "Authorization",
        max_batch: int | None = None,
        keep_readings: bool = True,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.api_key = api_key
        self.path = path
        self.key_header = key_header
        self.max_batch = max_batch
        self.keep_readings = keep_readings
        self.stats = ReceiverStats()
        self.lock = threading.Lock()
        self._readings: dict[str, dict[str, Any]] = {}
        self._seen: set[str] = set()
        self._latest: dict[str, Any] | None = None
        self._thread: threading.Thread | None = None
        self._server = _QuietServer((host, port), _make_handler(self))
        # Handler threads must never keep the process alive (a hung client, a demo exit).
        self._server.daemon_threads = True
        self._scheme = "http"
        if ssl_context is not None:
            self._server.socket = ssl_context.wrap_socket(self._server.socket, server_side=True)
            self._scheme = "https"

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        """The endpoint to configure as ``api.endpoint``."""
        host, port = self._server.server_address[:2]
        return f"{self._scheme}://{host!s}:{port}{self.path}"

    @property
    def port(self) -> int:
        """The TCP port the server listens on."""
        return int(self._server.server_address[1])

    def start(self) -> Receiver:
        """Serve in a background thread; returns self."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name="nixlog-receiver",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket (idempotent)."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ what it holds

    def readings(self) -> list[dict[str, Any]]:
        """Distinct readings in arrival order (empty when ``keep_readings`` is False)."""
        with self.lock:
            return list(self._readings.values())

    def seen_ids(self) -> set[str]:
        """Every distinct reading id received."""
        with self.lock:
            return set(self._seen)

    @property
    def latest(self) -> dict[str, Any] | None:
        """The most recently received reading, or None."""
        with self.lock:
            return self._latest

    # ------------------------------------------------------------------ answering

    def handle(self, request: ReceivedRequest) -> Reply:
        """Answer one request: check path, key and body, then store the batch."""
        refusal = self.check(request)
        if refusal is not None:
            return refusal
        return self.store(request)

    def check(self, request: ReceivedRequest) -> Reply | None:
        """The reply refusing ``request``, or None when it is an acceptable batch."""
        if request.method != "POST":
            return Reply.json(405, {"error": "use POST"}, {"Allow": "POST"})
        if request.path.split("?", 1)[0] != self.path:
            return Reply.json(404, {"error": f"no such endpoint: {request.path}"})
        if not self.key_ok(request):
            return Reply.json(401, {"error": "missing or wrong API key"})
        if request.problem is not None:
            return Reply.json(400, {"error": request.problem})
        readings = request.payload.get("readings")
        if self.max_batch is not None and len(readings) > self.max_batch:
            return Reply.json(413, {"error": f"at most {self.max_batch} readings per batch"})
        return None

    def key_ok(self, request: ReceivedRequest) -> bool:
        """True when no key is required or the configured header carries the right one."""
        if self.api_key is None:
            return True
        sent = request.headers.get(self.key_header.lower(), "")
        expected = self.api_key
        if self.key_header.lower() == "authorization":
            expected = f"Bearer {self.api_key}"
        return hmac.compare_digest(sent.encode(), expected.encode())

    def store(self, request: ReceivedRequest) -> Reply:
        """Keep the batch's readings, deduplicated on ``id``; answer 200 with the counts."""
        readings: list[dict[str, Any]] = request.payload["readings"]
        new = 0
        with self.lock:
            for reading in readings:
                reading_id = reading["id"]
                self.stats.received += 1
                if reading_id in self._seen:
                    self.stats.duplicates += 1
                    continue
                self._seen.add(reading_id)
                if self.keep_readings:
                    self._readings[reading_id] = reading
                new += 1
            self.stats.unique = len(self._seen)
            self.stats.batches += 1
            if readings:
                self._latest = readings[-1]
        return Reply.json(200, {"accepted": new, "duplicates": len(readings) - new})


def parse_request(method: str, path: str, headers: dict[str, str], raw: bytes) -> ReceivedRequest:
    """Decode a request body (gzip when declared) and validate the batch shape."""
    body = raw
    payload: Any = None
    problem: str | None = None
    encoding = headers.get("content-encoding", "identity").strip().lower()
    try:
        if encoding == "gzip":
            body = gzip.decompress(raw)
        elif encoding not in ("", "identity"):
            problem = f"unsupported Content-Encoding: {encoding}"
    except (OSError, EOFError, zlib.error) as exc:
        problem = f"bad gzip body: {exc}"
    if problem is None:
        try:
            payload = json.loads(body)
        except (UnicodeDecodeError, ValueError) as exc:
            problem = f"body is not JSON: {exc}"
    if problem is None:
        problem = _shape_problem(payload)
        if problem is not None:
            payload = None
    return ReceivedRequest(method, path, headers, raw, body, payload, problem, time.monotonic())


def _shape_problem(payload: Any) -> str | None:
    if not isinstance(payload, dict):
        return "body must be a JSON object"
    if not isinstance(payload.get("device_id"), str):
        return 'missing "device_id"'
    readings = payload.get("readings")
    if not isinstance(readings, list):
        return 'missing "readings" array'
    for index, reading in enumerate(readings):
        if not isinstance(reading, dict):
            return f"readings[{index}] is not an object"
        for key, kind in (("id", str), ("seq", int), ("timestamp", str), ("values", dict)):
            if not isinstance(reading.get(key), kind):
                return f'readings[{index}]: missing or bad "{key}"'
        if "errors" in reading and not isinstance(reading["errors"], dict):
            return f'readings[{index}]: "errors" must be an object'
    return None


def _make_handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: httpx reuses the connection
        # Headers and body go out in two writes; with Nagle on, the second waits for the
        # client's delayed ACK: a flat 40 ms per batch, which capped drains at ~20 batches/s.
        disable_nagle_algorithm = True
        server_version = "nixlog-receiver"

        def do_POST(self) -> None:
            self._serve("POST")

        def do_GET(self) -> None:
            self._serve("GET")

        def do_PUT(self) -> None:
            self._serve("PUT")

        def _serve(self, method: str) -> None:
            headers = {name.lower(): value for name, value in self.headers.items()}
            try:
                length = int(headers.get("content-length", "0"))
            except ValueError:
                length = -1
            if length < 0 or length > MAX_BODY_BYTES:
                self._send(Reply.json(413, {"error": "body too large or bad Content-Length"}))
                self.close_connection = True
                return
            raw = self.rfile.read(length) if length else b""
            request = parse_request(method, self.path, headers, raw)
            with receiver.lock:
                receiver.stats.requests += 1
            reply = receiver.handle(request)
            if reply.status >= 400:
                with receiver.lock:
                    receiver.stats.refused += 1
            self._send(reply)

        def _send(self, reply: Reply) -> None:
            try:
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)
            except (BrokenPipeError, ConnectionResetError):
                # The client gave up (its timeout): nothing to answer any more.
                self.close_connection = True

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("receiver: " + format, *args)

    return Handler
