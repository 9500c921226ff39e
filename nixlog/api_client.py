"""The HTTP output: the only module that imports httpx (``nixlog.outputs.http`` names it).

``api.format`` picks the body: ``nixlog`` (below), ``thingsboard`` (device telemetry under
``<endpoint>/api/v1/<key>/telemetry``) or ``influx`` (line protocol to InfluxDB 1.x
``/write?db=`` or 2.x ``/api/v2/write?org=&bucket=`` with ``Authorization: Token``); the
bodies themselves are built in ``nixlog.outputs.formats``. Status handling is the same for all.

``transform_for_api`` builds the JSON body of one batch and is pure. ``ApiClient.publish_data``
posts one batch and turns every answer and every httpx exception into a ``PublishResult`` whose
``kind`` tells the shipping station what to do with the rows; it never raises for anything the
network or the server can do.

Status classes (ARCHITECTURE.md: Shipping; the cases it leaves open are decided here):

- 2xx: ``delivered``.
- network error, timeout, 408, 425, 429, 5xx except 501/505, anything unexpected (1xx):
  ``temporary`` — keep the rows, retry later with backoff, honour ``Retry-After``.
- 401, 403, 407: ``auth`` — the key is wrong or revoked; keep the rows, back off, log loudly.
- 3xx, 404, 405, 406, 410, 411, 414, 415, 501, 505: ``endpoint`` — the URL, method or encoding
  is wrong for this server. These say nothing about the readings, so bisecting would wrongly
  reject the whole backlog: keep the rows and back off like ``auth``. 501 ("not implemented")
  belongs here: the server does not implement POST on that URL.
- 413: ``too_large`` — split the batch.
- any other 4xx (400, 409, 422, ...): ``refused`` — bisect to find the readings the API refuses.

Bounded against any server (ARCHITECTURE.md, hostile peers): ``api.timeout_sec`` is a deadline
for the whole request (connect, send, headers and body), not for each read; at most
``MAX_BODY_BYTES`` of the response body are read, raw, and only a short detail line is ever
inflated from them, so neither a 50 MB body nor a gzip bomb costs memory.
"""

from __future__ import annotations

import email.utils
import gzip as gzip_module
import math
import re
import ssl
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Final
from urllib.parse import quote, urlencode, urlsplit

import httpx

from nixlog import __version__
from nixlog.config import ApiConfig
from nixlog.errors import ConfigError
from nixlog.model import StoredReading
from nixlog.outputs import PublishResult, ResultKind
from nixlog.outputs.formats import encode_body, reading_id, transform_for_api

__all__ = [
    "ApiClient",
    "PublishResult",
    "ResultKind",
    "classify_status",
    "encode_body",
    "idempotency_key",
    "parse_retry_after",
    "reading_id",
    "transform_for_api",
]


MAX_RETRY_AFTER_SEC: Final = 3600.0
"""A ``Retry-After`` longer than an hour is taken as an hour: a typo on the server must not
silence a logger for days."""

_AUTH_STATUSES: Final = frozenset({401, 403, 407})
_ENDPOINT_STATUSES: Final = frozenset({404, 405, 406, 410, 411, 414, 415, 501, 505})
_TEMPORARY_4XX: Final = frozenset({408, 425, 429})
_DETAIL_LIMIT: Final = 200
MAX_BODY_BYTES: Final = 64 * 1024
"""At most this much of a response body is read (the status and a detail line are all we use)."""
_CANCEL_POLL_SEC: Final = 0.05
"""How often a caller waiting for a post looks at its cancel event (shutdown latency)."""
CANCEL_GRACE_SEC: Final = 1.0
"""How long a post in flight may still finish after a stop was asked for. Most answers come
in milliseconds: abandoning them at once would make the receiver see the batch again after
the restart. Well inside the daemon's 3 s join and its 5 s stop deadline."""
_DIGITS: Final = re.compile(r"[0-9]+")


def idempotency_key(device_id: str, epoch: str, rows: Sequence[StoredReading]) -> str:
    """``<device_id>-<epoch>-<first seq>-<last seq>``: the same batch always gets the same key."""
    if not rows:
        raise ValueError("idempotency_key needs at least one reading")
    return f"{device_id}-{epoch}-{rows[0].id}-{rows[-1].id}"


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta seconds or HTTP date).

    None when absent or unreadable; otherwise clamped to ``0..MAX_RETRY_AFTER_SEC``. Any
    string is accepted and none raises: a header is the server's text, not ours (400 digits,
    ``²``, negative numbers, dates in year 1 or 9999 are all seen in the field).
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if _DIGITS.fullmatch(text):  # ASCII digits only: str.isdigit() also accepts "²"
        # More than 10 digits is more than 300 years: clamp without building a huge number.
        seconds = MAX_RETRY_AFTER_SEC if len(text.lstrip("0")) > 10 else float(int(text))
    else:
        try:
            when = email.utils.parsedate_to_datetime(text)
            if when.tzinfo is None:  # "-0000" means UTC per RFC 5322
                when = when.replace(tzinfo=UTC)
            seconds = (when - now).total_seconds()
        except (TypeError, ValueError, IndexError, OverflowError, AttributeError):
            return None
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SEC)


def classify_status(status: int) -> ResultKind:
    """Map an HTTP status to what shipping must do with the batch (see the module docstring)."""
    if 200 <= status < 300:
        return "delivered"
    if status in _AUTH_STATUSES:
        return "auth"
    if status == 413:
        return "too_large"
    if status in _ENDPOINT_STATUSES or 300 <= status < 400:
        return "endpoint"
    if status in _TEMPORARY_4XX:
        return "temporary"
    if 400 <= status < 500:
        return "refused"
    return "temporary"


def _header_safe(value: str) -> bool:
    """True for printable ASCII without control characters (what a header value may hold)."""
    return all(" " <= ch <= "~" for ch in value)


def _ssl_context(ca_file: str | None) -> ssl.SSLContext:
    """The default trust store, plus ``ca_file`` when given; verification is never off."""
    context = httpx.create_ssl_context()
    if ca_file is not None:
        try:
            context.load_verify_locations(cafile=ca_file)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(
                f"api.ca_file: cannot use {ca_file} as a CA certificate file ({exc})"
            ) from None
    return context


class ApiClient:
    """Posts batches for one device and database epoch to ``api.endpoint``.

    ``transport`` replaces the network (``httpx.MockTransport`` in unit tests); ``wall_clock``
    gives "now" for ``Retry-After`` dates; a set ``cancel`` event (the daemon's stop event)
    abandons a post in flight. Use as a context manager or call ``close()``.
    """

    def __init__(
        self,
        api: ApiConfig,
        device_id: str,
        epoch: str,
        *,
        transport: httpx.BaseTransport | None = None,
        wall_clock: Callable[[], datetime] | None = None,
        cancel: threading.Event | None = None,
    ) -> None:
        self.api = api
        self.cancel = cancel
        self.device_id = device_id
        self.epoch = epoch
        self._wall_clock = wall_clock or (lambda: datetime.now(UTC))
        if not _header_safe(api.api_key.reveal()):
            # Caught here, not by httpx mid-send: its error would be a traceback.
            raise ConfigError(
                "api.api_key: contains characters that cannot be sent in an HTTP header "
                "(only printable ASCII is allowed)"
            )
        verify: ssl.SSLContext | bool = True
        if transport is None and urlsplit(api.endpoint).scheme != "https" and not api.ca_file:
            # Plain HTTP (redirects are not followed) never handshakes: a context with an
            # empty trust store still verifies, refuses every certificate, and saves the
            # ~1.7 MB that parsing the default trust store keeps resident for months.
            verify = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        elif transport is None:
            verify = _ssl_context(str(api.ca_file) if api.ca_file else None)
        self._client = httpx.Client(
            transport=transport,
            verify=verify,
            timeout=httpx.Timeout(api.timeout_sec),
            follow_redirects=False,
        )

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()

    name = "api"

    def payload(self, rows: Sequence[StoredReading]) -> Any:
        """The body ``publish_data(rows)`` would send (used by ``publish --dry-run``).

        A JSON document for the nixlog and thingsboard formats, line protocol text for influx.
        """
        from nixlog.outputs import formats

        if self.api.format == "thingsboard":
            return formats.thingsboard_telemetry(rows)
        if self.api.format == "influx":
            return formats.influx_lines(rows)
        return transform_for_api(self.device_id, self.epoch, rows)

    def body(self, rows: Sequence[StoredReading]) -> bytes:
        """The encoded body (gzipped when ``api.gzip``)."""
        return self._encode(self.payload(rows))

    def _encode(self, payload: Any) -> bytes:
        if isinstance(payload, str):
            data = payload.encode("utf-8")
            return gzip_module.compress(data, compresslevel=6, mtime=0) if self.api.gzip else data
        return encode_body(payload, compress=self.api.gzip)

    def url(self, *, reveal_key: bool = False) -> str:
        """Where the batch goes: the endpoint, or the format's path under it."""
        base = self.api.endpoint.rstrip("/")
        if self.api.format == "thingsboard":
            token = quote(self.api.api_key.reveal(), safe="") if reveal_key else "********"
            return f"{base}/api/v1/{token}/telemetry"
        if self.api.format == "influx":
            if self.api.influx_db is not None:
                return f"{base}/write?" + urlencode({"db": self.api.influx_db, "precision": "ns"})
            query = {
                "org": self.api.influx_org or "",
                "bucket": self.api.influx_bucket or "",
                "precision": "ns",
            }
            return f"{base}/api/v2/write?" + urlencode(query)
        return self.api.endpoint

    def headers(self, rows: Sequence[StoredReading], *, reveal_key: bool = False) -> dict[str, str]:
        """The request headers for ``rows``; the key is masked unless ``reveal_key``."""
        key = self.api.api_key.reveal() if reveal_key else "********"
        header = self.api.api_key_header
        headers = {"Content-Type": "application/json"}
        if self.api.format == "influx":
            headers["Content-Type"] = "text/plain; charset=utf-8"
            if self.api.api_key.reveal():
                headers["Authorization"] = f"Token {key}"
        elif self.api.format == "nixlog":
            headers[header] = f"Bearer {key}" if header.lower() == "authorization" else key
        # thingsboard: the device token is part of the URL, no header carries it.
        headers["Idempotency-Key"] = idempotency_key(self.device_id, self.epoch, rows)
        headers["User-Agent"] = f"nixlog/{__version__}"
        if self.api.gzip:
            headers["Content-Encoding"] = "gzip"
        return headers

    def publish_data(
        self, rows: Sequence[StoredReading], cancel: threading.Event | None = None
    ) -> PublishResult:
        """POST ``rows`` as one batch and classify the outcome; never raises for I/O.

        The whole request is bounded by ``api.timeout_sec``; a set ``cancel`` event (shutdown)
        abandons it sooner, after ``CANCEL_GRACE_SEC`` in which it may still finish. An
        abandoned post may or may not have reached the server: its rows stay unsent and are
        offered again later with the same ids (at-least-once).
        """
        cancel = cancel if cancel is not None else self.cancel
        payload = self.payload(rows)
        if self.api.format == "influx" and not payload:
            # Every reading of the batch failed all its registers: nothing to write.
            return PublishResult("delivered", detail="no values to write")
        body = self._encode(payload)
        headers = self.headers(rows, reveal_key=True)
        started = time.monotonic()
        deadline = started + self.api.timeout_sec
        post = _Post()
        # httpx bounds each read, never the request: a server that sends a byte every 2 s
        # would hold us for ever. The post runs in a worker thread that we stop waiting for at
        # the deadline; the worker itself gives up at its next read or chunk (see _run).
        worker = threading.Thread(
            target=self._run, args=(post, body, headers, deadline), name="nixlog-post", daemon=True
        )
        worker.start()
        cancelled_at: float | None = None
        while not post.done.is_set():
            now = time.monotonic()
            remaining = deadline - now
            if remaining <= 0:
                post.abandoned.set()
                return PublishResult(
                    "temporary",
                    detail=f"no complete answer from the API within {self.api.timeout_sec:g} s "
                    "(timeout)",
                )
            if cancel is not None and cancel.is_set():
                cancelled_at = now if cancelled_at is None else cancelled_at
                if now - cancelled_at >= CANCEL_GRACE_SEC:
                    post.abandoned.set()
                    return PublishResult("temporary", detail="post abandoned: shutting down")
            post.done.wait(min(remaining, _CANCEL_POLL_SEC) if cancel is not None else remaining)
        assert post.result is not None
        return post.result

    def _run(self, post: _Post, body: bytes, headers: dict[str, str], deadline: float) -> None:
        """The worker: send, read the status, headers and at most ``MAX_BODY_BYTES``."""
        try:
            result = self._send(post, body, headers, deadline)
        except Exception as exc:  # the caller must get a result, never a raise
            result = PublishResult(
                "temporary", detail=self._redact(f"unexpected error talking to the API: {exc}")
            )
        if not post.done.is_set():  # a 2xx is answered as soon as its status is known
            post.result = result
            post.done.set()

    def _send(
        self, post: _Post, body: bytes, headers: dict[str, str], deadline: float
    ) -> PublishResult:
        started = deadline - self.api.timeout_sec
        # Each phase's own timeout is what is left of the deadline, so the worker ends soon
        # after the caller stopped waiting for it.
        timeout = httpx.Timeout(max(deadline - time.monotonic(), 0.001))
        try:
            with self._client.stream(
                "POST", self.url(reveal_key=True), content=body, headers=headers, timeout=timeout
            ) as response:
                if 200 <= response.status_code < 300:
                    # The status says the batch was accepted: nobody waits for the body, which
                    # is still read (capped) so that the connection can be reused.
                    post.result = self._result(response, b"")
                    post.done.set()
                raw = _read_capped(response, deadline, post.abandoned)
                return self._result(response, raw)
        except httpx.TimeoutException:
            waited = time.monotonic() - started
            return PublishResult(
                "temporary", detail=f"no answer from the API within {waited:.1f} s (timeout)"
            )
        except httpx.TransportError as exc:
            return PublishResult("temporary", detail=self._redact(f"cannot reach the API: {exc}"))
        except ssl.SSLError as exc:  # e.g. an unreadable ca_file chain at handshake time
            return PublishResult("temporary", detail=self._redact(f"TLS error: {exc}"))

    def _result(self, response: httpx.Response, raw: bytes) -> PublishResult:
        status = response.status_code
        kind = classify_status(status)
        retry_after = None
        if kind == "temporary":
            retry_after = parse_retry_after(response.headers.get("Retry-After"), self._wall_clock())
        detail = f"HTTP {status} {response.reason_phrase}".rstrip()
        if kind != "delivered":
            text = _detail_text(raw, response.headers.get("Content-Encoding", ""))
            snippet = " ".join(text.split())[:_DETAIL_LIMIT]
            if snippet:
                detail += f": {snippet}"
        return PublishResult(
            kind, status=status, retry_after=retry_after, detail=self._redact(detail)
        )

    def _redact(self, text: str) -> str:
        """Belt and braces: a server or an exception that echoes the key must not leak it."""
        key = self.api.api_key.reveal()
        if not key:
            return text
        return text.replace(key, "********").replace(quote(key, safe=""), "********")


@dataclass
class _Post:
    """One request shared by the caller and its worker thread."""

    done: threading.Event = field(default_factory=threading.Event)
    abandoned: threading.Event = field(default_factory=threading.Event)
    result: PublishResult | None = None


def _read_capped(response: httpx.Response, deadline: float, abandoned: threading.Event) -> bytes:
    """At most ``MAX_BODY_BYTES`` of the raw (still encoded) body, stopping at the deadline.

    Raw, so that nothing is inflated here. Whatever is left unread is not drained: leaving the
    ``stream`` block closes the connection instead (a 50 MB body is never fetched).
    """
    chunks: list[bytes] = []
    size = 0
    try:
        for chunk in response.iter_raw():
            chunks.append(chunk[: MAX_BODY_BYTES - size])
            size += len(chunks[-1])
            if size >= MAX_BODY_BYTES or abandoned.is_set() or time.monotonic() >= deadline:
                break
    except httpx.StreamConsumed:
        # Only an in-memory transport (httpx.MockTransport) hands over a body already read.
        return response.content[:MAX_BODY_BYTES]
    return b"".join(chunks)


def _detail_text(raw: bytes, encoding: str) -> str:
    """The start of a response body as text, inflated (gzip/deflate) to a few KiB at most."""
    coding = encoding.strip().lower()
    if coding in ("gzip", "x-gzip", "deflate"):
        wbits = 16 + zlib.MAX_WBITS if "gzip" in coding else zlib.MAX_WBITS
        try:
            # max_length bounds the output whatever the ratio (a gzip bomb inflates no further).
            raw = zlib.decompressobj(wbits).decompress(raw, 4 * _DETAIL_LIMIT)
        except zlib.error:
            return ""
    elif coding not in ("", "identity"):
        return ""  # br, zstd ...: the status says enough
    return raw[: 4 * _DETAIL_LIMIT].decode("utf-8", errors="replace")
