"""api_client: payload shape, headers, status classification, against a real HTTP server."""

from __future__ import annotations

import gzip
import json
import math
import ssl
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import certifi
import httpx
import pytest

from nixlog import __version__
from nixlog.api_client import (
    MAX_RETRY_AFTER_SEC,
    ApiClient,
    classify_status,
    encode_body,
    idempotency_key,
    parse_retry_after,
    transform_for_api,
)
from nixlog.config import ApiConfig, Secret
from nixlog.errors import ConfigError
from nixlog.model import StoredReading
from tests.fixtures_http import TEST_API_KEY
from tests.receiver import ScriptedReceiver, Step

DEVICE = "10000000a3b2c1d0"
EPOCH = "7f3a9c"

MakeApi = Callable[..., ApiConfig]


def rows(first: int, count: int) -> list[StoredReading]:
    """``count`` stored readings with ids from ``first``; every third one has an error."""
    result = []
    for seq in range(first, first + count):
        errors = {"temperature": "timeout"} if seq % 3 == 0 else {}
        result.append(
            StoredReading(
                id=seq,
                timestamp=f"2026-11-26T16:00:{seq % 60:02d}.123456+00:00",
                device_id=DEVICE,
                values={"voltage_l1": 230.5, "breaker_closed": True, "count": seq},
                errors=errors,
            )
        )
    return result


# ------------------------------------------------------------------ pure shaping


def test_transform_for_api_matches_the_design_shape_field_by_field() -> None:
    """The body has device_id and, per reading, id/seq/timestamp/values, errors only if any."""
    body = transform_for_api(DEVICE, EPOCH, rows(1042, 2) + rows(1046, 1))
    assert set(body) == {"device_id", "readings"}
    assert body["device_id"] == DEVICE
    first, second, third = body["readings"]
    assert first == {
        "id": f"{DEVICE}-{EPOCH}-1042",
        "seq": 1042,
        "timestamp": "2026-11-26T16:00:22.123456+00:00",
        "values": {"voltage_l1": 230.5, "breaker_closed": True, "count": 1042},
    }
    assert set(second) == {"id", "seq", "timestamp", "values"}
    assert third["seq"] == 1046 and third["id"] == f"{DEVICE}-{EPOCH}-1046"
    assert "errors" not in first and "errors" not in third
    with_error = transform_for_api(DEVICE, EPOCH, rows(1044, 1))["readings"][0]
    assert with_error["errors"] == {"temperature": "timeout"}


def test_transform_moves_non_finite_floats_to_errors_so_the_json_stays_strict() -> None:
    """NaN/inf values become errors: strict JSON has no NaN and the reading still ships."""
    row = StoredReading(1, "2026-01-01T00:00:00+00:00", DEVICE, {"a": math.nan, "b": 1.5}, {})
    reading = transform_for_api(DEVICE, EPOCH, [row])["readings"][0]
    assert reading["values"] == {"b": 1.5}
    assert reading["errors"] == {"a": "non-finite value (nan)"}
    json.loads(encode_body(transform_for_api(DEVICE, EPOCH, [row]), compress=False))


def test_idempotency_key_names_first_and_last_seq() -> None:
    """The key is <device>-<epoch>-<first seq>-<last seq>, the same on every retry."""
    assert idempotency_key(DEVICE, EPOCH, rows(5, 10)) == f"{DEVICE}-{EPOCH}-5-14"
    with pytest.raises(ValueError):
        idempotency_key(DEVICE, EPOCH, [])


def test_gzip_body_is_deterministic_and_decompresses_to_the_json() -> None:
    """A gzipped batch is byte-identical across retries and decompresses to the same JSON."""
    payload = transform_for_api(DEVICE, EPOCH, rows(1, 50))
    first = encode_body(payload, compress=True)
    assert first == encode_body(payload, compress=True)
    assert json.loads(gzip.decompress(first)) == payload


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (200, "delivered"),
        (201, "delivered"),
        (204, "delivered"),
        (400, "refused"),
        (409, "refused"),
        (422, "refused"),
        (401, "auth"),
        (403, "auth"),
        (413, "too_large"),
        (404, "endpoint"),
        (405, "endpoint"),
        (415, "endpoint"),
        (501, "endpoint"),
        (301, "endpoint"),
        (408, "temporary"),
        (429, "temporary"),
        (500, "temporary"),
        (502, "temporary"),
        (503, "temporary"),
        (504, "temporary"),
        (599, "temporary"),
    ],
)
def test_classify_status(status: int, kind: str) -> None:
    """Each status maps to the handling of ARCHITECTURE.md: Shipping (501 and 404 are endpoint
    problems)."""
    assert classify_status(status) == kind


def test_parse_retry_after_seconds_dates_and_clamping() -> None:
    """Retry-After is read as seconds or an HTTP date, clamped to 0..1 h; junk is ignored."""
    now = datetime(2026, 11, 26, 16, 0, 0, tzinfo=UTC)
    assert parse_retry_after("7", now) == 7.0
    assert parse_retry_after(format_datetime(now + timedelta(seconds=30), usegmt=True), now) == 30
    assert parse_retry_after(format_datetime(now - timedelta(hours=1), usegmt=True), now) == 0
    assert parse_retry_after("999999", now) == MAX_RETRY_AFTER_SEC
    assert parse_retry_after(None, now) is None
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after("-5", now) is None


def test_mock_transport_sees_every_header(make_api_config: MakeApi) -> None:
    """Content-Type, Bearer key, Idempotency-Key and User-Agent go on every request."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200)

    api = make_api_config("https://api.example.com/v1/data")
    with ApiClient(api, DEVICE, EPOCH, transport=httpx.MockTransport(handler)) as client:
        result = client.publish_data(rows(1, 3))
    assert result.ok and result.status == 200
    (request,) = seen
    assert request.method == "POST"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["authorization"] == f"Bearer {TEST_API_KEY}"
    assert request.headers["idempotency-key"] == f"{DEVICE}-{EPOCH}-1-3"
    assert request.headers["user-agent"] == f"nixlog/{__version__}"
    assert "content-encoding" not in request.headers
    assert json.loads(request.content) == transform_for_api(DEVICE, EPOCH, rows(1, 3))


def test_other_key_header_carries_the_raw_key(make_api_config: MakeApi) -> None:
    """A configured api_key_header other than Authorization gets the key without "Bearer"."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)

    api = make_api_config("https://api.example.com/v1/data", api_key_header="X-Api-Key")
    with ApiClient(api, DEVICE, EPOCH, transport=httpx.MockTransport(handler)) as client:
        assert client.publish_data(rows(1, 1)).ok
    assert seen[0].headers["x-api-key"] == TEST_API_KEY
    assert "authorization" not in seen[0].headers


def test_masked_headers_never_show_the_key(make_api_config: MakeApi) -> None:
    """headers() (used by --dry-run) masks the key unless asked to reveal it for the wire."""
    api = make_api_config("https://api.example.com/v1/data")
    with ApiClient(api, DEVICE, EPOCH) as client:
        assert TEST_API_KEY not in json.dumps(client.headers(rows(1, 2)))


def test_ca_file_is_added_to_the_default_trust_store(
    make_api_config: MakeApi, tmp_path: Path
) -> None:
    """A readable CA bundle is accepted; an unusable one is a config error naming the key."""
    with ApiClient(make_api_config("https://x/", ca_file=Path(certifi.where())), DEVICE, EPOCH):
        pass
    junk = tmp_path / "ca.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match=r"api\.ca_file"):
        ApiClient(make_api_config("https://x/", ca_file=junk), DEVICE, EPOCH)


# ------------------------------------------------------------------ real server on 127.0.0.1


def test_real_server_receives_the_exact_body_and_headers(
    receiver: ScriptedReceiver, make_api_config: MakeApi
) -> None:
    """Over real HTTP the receiver gets the JSON and headers, and stores each reading once."""
    with ApiClient(make_api_config(receiver.url), DEVICE, EPOCH) as client:
        result = client.publish_data(rows(1, 5))
    assert result.kind == "delivered" and result.status == 200
    (request,) = receiver.requests
    assert request.headers["authorization"] == f"Bearer {TEST_API_KEY}"
    assert request.headers["idempotency-key"] == f"{DEVICE}-{EPOCH}-1-5"
    assert request.payload == transform_for_api(DEVICE, EPOCH, rows(1, 5))
    assert receiver.stats.unique == 5


def test_gzip_over_the_wire_decompresses_to_the_same_json(
    receiver: ScriptedReceiver, make_api_config: MakeApi
) -> None:
    """With api.gzip the body is sent gzipped, declared so, and gunzips to the same JSON."""
    with ApiClient(make_api_config(receiver.url, gzip=True), DEVICE, EPOCH) as client:
        assert client.publish_data(rows(1, 20)).ok
    (request,) = receiver.requests
    assert request.headers["content-encoding"] == "gzip"
    assert request.raw_body[:2] == b"\x1f\x8b"
    assert len(request.raw_body) < len(request.body)
    assert json.loads(gzip.decompress(request.raw_body)) == transform_for_api(
        DEVICE, EPOCH, rows(1, 20)
    )
    assert receiver.stats.unique == 20


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_5xx_is_temporary(
    receiver: ScriptedReceiver, make_api_config: MakeApi, status: int
) -> None:
    """500/502/503/504 are temporary failures with the status in the detail."""
    receiver.queue(Step(status))
    with ApiClient(make_api_config(receiver.url), DEVICE, EPOCH) as client:
        result = client.publish_data(rows(1, 3))
    assert (result.kind, result.status) == ("temporary", status)
    assert f"HTTP {status}" in result.detail


def test_429_retry_after_seconds_and_date_are_parsed(
    receiver: ScriptedReceiver, make_api_config: MakeApi
) -> None:
    """429's Retry-After comes back in seconds whether the server sent seconds or a date."""
    now = datetime(2026, 11, 26, 16, 0, 0, tzinfo=UTC)
    http_date = format_datetime(now + timedelta(seconds=42), usegmt=True)
    receiver.queue(Step(429, retry_after="17"), Step(429, retry_after=http_date))
    api = make_api_config(receiver.url)
    with ApiClient(api, DEVICE, EPOCH, wall_clock=lambda: now) as client:
        first = client.publish_data(rows(1, 1))
        second = client.publish_data(rows(1, 1))
    assert (first.kind, first.status, first.retry_after) == ("temporary", 429, 17.0)
    assert (second.kind, second.retry_after) == ("temporary", 42.0)


def test_401_is_an_auth_problem_and_the_key_is_not_echoed(
    receiver: ScriptedReceiver, make_api_config: MakeApi
) -> None:
    """A wrong key gets 401 -> auth; even a server echoing the key never leaks it into detail."""
    api = make_api_config(receiver.url, api_key=Secret("wrong-key-123"))
    with ApiClient(api, DEVICE, EPOCH) as client:
        assert client.publish_data(rows(1, 1)).kind == "auth"
    receiver.queue(Step(403, body=f"forbidden: key {TEST_API_KEY} revoked"))
    with ApiClient(make_api_config(receiver.url), DEVICE, EPOCH) as client:
        result = client.publish_data(rows(1, 1))
    assert result.kind == "auth"
    assert TEST_API_KEY not in result.detail and "revoked" in result.detail


def test_413_is_too_large(make_api_config: MakeApi) -> None:
    """A receiver with a batch limit answers 413 for a larger batch -> too_large."""
    with (
        ScriptedReceiver(api_key=TEST_API_KEY, max_batch=10) as rx,
        ApiClient(make_api_config(rx.url), DEVICE, EPOCH) as client,
    ):
        assert client.publish_data(rows(1, 11)).kind == "too_large"
        assert client.publish_data(rows(1, 10)).ok


def test_server_down_is_temporary(dead_url: str, make_api_config: MakeApi) -> None:
    """Nothing listening: a temporary failure saying it cannot reach the API."""
    with ApiClient(make_api_config(dead_url), DEVICE, EPOCH) as client:
        result = client.publish_data(rows(1, 1))
    assert result.kind == "temporary" and result.status is None
    assert "cannot reach the API" in result.detail


def test_server_that_never_answers_times_out(
    receiver: ScriptedReceiver, make_api_config: MakeApi
) -> None:
    """A server that accepts and never answers is a temporary failure after the timeout."""
    receiver.always(Step(hang=True))
    with ApiClient(make_api_config(receiver.url, timeout_sec=0.3), DEVICE, EPOCH) as client:
        result = client.publish_data(rows(1, 1))
    assert result.kind == "temporary" and "timeout" in result.detail


def test_key_that_cannot_go_in_a_header_is_a_config_error(make_api_config: MakeApi) -> None:
    """A key with a newline or non-ASCII is refused up front (exit 78), never a traceback."""
    for bad in ("abc\ndef", "clé"):
        with pytest.raises(ConfigError, match=r"api\.api_key") as caught:
            ApiClient(make_api_config("https://x/", api_key=Secret(bad)), DEVICE, EPOCH)
        assert bad not in str(caught.value)


# ------------------------------------------------------------------ TLS on 127.0.0.1


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A throw-away certificate for 127.0.0.1 and its key (made with the openssl CLI)."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )  # fmt: skip
    return cert, key


def test_tls_verification_is_on_and_ca_file_makes_a_private_ca_trusted(
    self_signed: tuple[Path, Path], make_api_config: MakeApi
) -> None:
    """An unknown certificate fails (temporary, nothing sent); with it as ca_file, delivered."""
    cert, key = self_signed
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    with ScriptedReceiver(api_key=TEST_API_KEY, ssl_context=server_context) as rx:
        assert rx.url.startswith("https://127.0.0.1:")
        with ApiClient(make_api_config(rx.url), DEVICE, EPOCH) as client:
            refused = client.publish_data(rows(1, 2))
        assert refused.kind == "temporary" and "CERTIFICATE_VERIFY_FAILED" in refused.detail
        assert rx.stats.unique == 0
        with ApiClient(make_api_config(rx.url, ca_file=cert), DEVICE, EPOCH) as client:
            assert client.publish_data(rows(1, 2)).ok
        assert rx.stats.unique == 2


def _slow_ok(delay_sec: float) -> Callable[..., None]:
    """A hostile-server answer: 200 after ``delay_sec``."""

    def answer(conn: object, server: object) -> None:
        import socket
        import time

        assert isinstance(conn, socket.socket)
        time.sleep(delay_sec)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

    return answer


def test_a_stop_lets_a_post_in_flight_finish_within_the_grace(
    make_api_config: Callable[..., ApiConfig],
) -> None:
    """A stop asked for while a quick post is in flight does not abandon it (no re-send later)."""
    import threading
    import time

    from nixlog.api_client import CANCEL_GRACE_SEC
    from tests.faults.hostile import HostileServer

    stop = threading.Event()
    with (
        HostileServer(_slow_ok(0.3)) as server,
        ApiClient(make_api_config(server.url), DEVICE, EPOCH, cancel=stop) as client,
    ):
        threading.Timer(0.05, stop.set).start()
        started = time.monotonic()
        result = client.publish_data(rows(1, 3))
    assert result.kind == "delivered", result.detail
    assert time.monotonic() - started < CANCEL_GRACE_SEC


def test_a_stop_abandons_a_hanging_post_after_the_grace(
    make_api_config: Callable[..., ApiConfig],
) -> None:
    """A post the server never answers is abandoned once the grace after a stop has passed."""
    import threading
    import time

    from nixlog.api_client import CANCEL_GRACE_SEC
    from tests.faults.hostile import HostileServer, hang

    stop = threading.Event()
    with HostileServer(hang()) as server:
        api = make_api_config(server.url, timeout_sec=30)
        client = ApiClient(api, DEVICE, EPOCH, cancel=stop)
        threading.Timer(0.1, stop.set).start()
        started = time.monotonic()
        result = client.publish_data(rows(1, 3))
        waited = time.monotonic() - started
        client.close()
    assert result.kind == "temporary" and "shutting down" in result.detail
    assert CANCEL_GRACE_SEC <= waited < CANCEL_GRACE_SEC + 1.0
