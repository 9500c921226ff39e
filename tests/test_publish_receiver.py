"""nixlog.receiver: the local endpoint `nixlog demo` ships to (key, gzip, dedup, refusals)."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from nixlog.receiver import Receiver

KEY = "receiver-key"


def batch(*ids: str, device: str = "dev") -> dict[str, object]:
    """A valid API batch body holding readings with these ids."""
    return {
        "device_id": device,
        "readings": [
            {"id": i, "seq": n, "timestamp": "2026-11-26T16:00:00+00:00", "values": {"v": n}}
            for n, i in enumerate(ids, start=1)
        ],
    }


@pytest.fixture
def rx() -> Iterator[Receiver]:
    with Receiver(api_key=KEY) as receiver:
        yield receiver


def post(url: str, body: bytes, **headers: str) -> httpx.Response:
    merged = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json", **headers}
    return httpx.post(url, content=body, headers=merged, timeout=5)


def test_accepts_counts_and_deduplicates_on_id(rx: Receiver) -> None:
    """A batch is stored; a resent reading counts as a duplicate, not a new reading."""
    first = post(rx.url, json.dumps(batch("a", "b")).encode())
    second = post(rx.url, json.dumps(batch("b", "c")).encode())
    assert first.status_code == 200 and first.json() == {"accepted": 2, "duplicates": 0}
    assert second.json() == {"accepted": 1, "duplicates": 1}
    assert (rx.stats.received, rx.stats.unique, rx.stats.duplicates) == (4, 3, 1)
    assert [r["id"] for r in rx.readings()] == ["a", "b", "c"]
    assert rx.latest is not None and rx.latest["id"] == "c"


def test_gzip_body_is_gunzipped(rx: Receiver) -> None:
    """Content-Encoding: gzip bodies are decompressed; a corrupt one is refused with 400."""
    body = gzip.compress(json.dumps(batch("z")).encode())
    assert post(rx.url, body, **{"Content-Encoding": "gzip"}).status_code == 200
    assert rx.seen_ids() == {"z"}
    bad = post(rx.url, b"\x1f\x8bnot gzip", **{"Content-Encoding": "gzip"})
    assert bad.status_code == 400 and "gzip" in bad.json()["error"]


def test_key_is_checked(rx: Receiver) -> None:
    """No key or a wrong key is 401; nothing is stored."""
    body = json.dumps(batch("a")).encode()
    assert httpx.post(rx.url, content=body, timeout=5).status_code == 401
    assert post(rx.url, body, Authorization="Bearer nope").status_code == 401
    assert rx.stats.unique == 0


def test_other_key_header_takes_the_raw_key() -> None:
    """With key_header X-Api-Key the raw key is expected there."""
    with Receiver(api_key=KEY, key_header="X-Api-Key") as receiver:
        body = json.dumps(batch("a")).encode()
        assert httpx.post(receiver.url, content=body, headers={"X-Api-Key": KEY}).is_success
        assert httpx.post(receiver.url, content=body, headers={"X-Api-Key": "x"}).status_code == 401


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"{not json", "not JSON"),
        (b"[]", "JSON object"),
        (b'{"readings": []}', "device_id"),
        (b'{"device_id": "d", "readings": [{"id": "x"}]}', '"seq"'),
    ],
)
def test_malformed_batches_are_refused_with_400(rx: Receiver, body: bytes, problem: str) -> None:
    """Bodies that are not an API batch get 400 with a one-line reason."""
    response = post(rx.url, body)
    assert response.status_code == 400 and problem in response.json()["error"]


def test_wrong_path_method_and_size(rx: Receiver) -> None:
    """Another path is 404, GET is 405, and max_batch answers 413 to larger batches."""
    body = json.dumps(batch("a", "b", "c")).encode()
    assert post(rx.url.replace("/v1/data", "/other"), body).status_code == 404
    assert httpx.get(rx.url, timeout=5).status_code == 405
    with Receiver(max_batch=2) as small:
        assert post(small.url, body).status_code == 413
        assert small.stats.refused == 1


def test_keep_readings_false_keeps_only_ids() -> None:
    """A long demo can count and deduplicate without keeping every reading in memory."""
    with Receiver(keep_readings=False) as receiver:
        post(receiver.url, json.dumps(batch("a", "b")).encode())
        assert receiver.readings() == [] and receiver.seen_ids() == {"a", "b"}


def test_importing_core_does_not_import_httpx() -> None:
    """core refers to the API client only for typing: `nixlog db stats` stays httpx-free."""
    code = "import sys, nixlog.core, nixlog.cli; print('httpx' in sys.modules)"
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert proc.stdout.strip() == "False"


def test_a_client_hanging_up_mid_request_prints_no_traceback(
    rx: Receiver, capfd: pytest.CaptureFixture[str]
) -> None:
    """A post abandoned mid-request (RST) leaves no socketserver traceback on stderr."""
    import socket
    import struct
    import time

    host, port = rx.url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)
    sock = socket.create_connection((host, int(port)))
    sock.sendall(b"POST /v1/data HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
    # SO_LINGER 0: close sends RST, as an abandoned connection of a stopping process does.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    time.sleep(0.3)
    # The receiver still serves the next client.
    assert post(rx.url, json.dumps(batch("a-1")).encode()).status_code == 200
    assert "Traceback" not in capfd.readouterr().err
