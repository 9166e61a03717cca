"""Limits below the application (serving/http_limits.py), on the live "strict" server (conftest.live_servers:
4 KiB of headers, 1 s for the headers, 1 s for a body, 3 connections), over raw sockets: what a hostile or broken
client sends and no HTTP library would."""
import json
import socket
import threading
import time
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")

TIMEOUT = 1.0  # the strict server's --header-timeout and --body-timeout
MAX_CONNECTIONS = 3


@pytest.fixture(scope="module")
def strict(live_servers):
    return live_servers["strict"]


def connect(server) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    return sock


def answer(sock) -> tuple[int, dict, bytes]:
    """Read until the server closes: (status, headers, body). The server must close after any refusal."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


def assert_openai_error(status, body, expected):
    assert status == expected
    assert json.loads(body)["error"]["message"]


def send_quietly(sock, data: bytes) -> None:
    """Send what the server may stop reading (it refuses, then closes): a reset is the point, not a failure."""
    try:
        sock.sendall(data)
    except OSError:
        pass


def open_connections(port: int) -> int:
    """Connections the server at 127.0.0.1:port holds: its side's sockets, established or with the client gone."""
    established, close_wait = "01", "08"
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        count += int(local.split(":")[1], 16) == port and state in (established, close_wait)
    return count


def wait_for(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def healthy(server) -> bool:
    return httpx.get(server.url + "/health", headers={"Connection": "close"}, timeout=10).status_code == 200


@pytest.mark.parametrize("header_bytes", [6_000, 64 << 20], ids=["in one read", "64 MB streamed"])
def test_headers_past_the_limit_get_431_before_the_rest_is_read(strict, header_bytes):
    memory = strict.rss_bytes()
    with connect(strict) as sock:
        request = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * header_bytes + b"\r\n\r\n"
        sender = threading.Thread(target=send_quietly, args=(sock, request))
        sender.start()
        status, _, body = answer(sock)
        sender.join()
    assert_openai_error(status, body, 431)
    assert strict.rss_bytes() - memory < 16 << 20  # not the 64 MB header: at most the limit and a read's buffer
    assert healthy(strict)


def test_headers_under_the_limit_are_answered(strict):
    assert httpx.get(strict.url + "/health", headers={"X-Note": "a" * 3000}).status_code == 200


@pytest.mark.parametrize("path", ["/health", "/v1/completions"])
def test_headers_sent_a_byte_at_a_time_get_408_when_their_time_is_up(strict, path):
    with connect(strict) as sock:
        start = time.monotonic()
        sock.sendall(f"POST {path} HTTP/1.1\r\n".encode())
        try:
            for byte in b"X-Slow: " + b"a" * 100:
                sock.sendall(bytes([byte]))
                time.sleep(0.1)
        except OSError:  # refused and closed while still dribbling
            pass
        status, _, body = answer(sock)
    assert_openai_error(status, body, 408)
    assert TIMEOUT <= time.monotonic() - start < TIMEOUT + 2
    assert healthy(strict)


def test_a_connection_that_sends_nothing_is_closed(strict):
    with connect(strict) as sock:
        start = time.monotonic()
        assert sock.recv(100) == b""  # closed without an answer: no request to answer
    assert TIMEOUT <= time.monotonic() - start < TIMEOUT + 2


@pytest.mark.parametrize("dribble", [False, True], ids=["body shorter than Content-Length", "a byte every 0.1 s"])
def test_a_body_that_does_not_arrive_whole_gets_408(strict, dribble):
    body = json.dumps({"prompt": "x", "max_tokens": 1}).encode()
    finished = strict.health()["finished"]
    with connect(strict) as sock:
        start = time.monotonic()
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % (len(body) + 100 * dribble + 1))
        sock.sendall(body[:10])
        try:
            for byte in body[10:] + b" " * 100 * dribble:
                time.sleep(0.1 if dribble else 0)
                sock.sendall(bytes([byte]))
        except OSError:
            pass
        status, _, answered = answer(sock)
    assert_openai_error(status, answered, 408)
    assert TIMEOUT <= time.monotonic() - start < TIMEOUT + 2
    assert strict.health()["finished"] == finished  # nothing was started


def test_a_whole_body_and_kept_alive_connections_are_served(strict):
    # A body close to the 1 MiB cap, and a connection reused after an idle pause longer than the header timeout
    # (idle keep-alive is uvicorn's timeout_keep_alive, not the header timeout).
    prompt = "x " * 200_000
    with httpx.Client(base_url=strict.url, timeout=30) as client:
        large = client.post("/v1/completions", json={"prompt": prompt, "max_tokens": 1})
        assert large.status_code == 400 and large.json()["error"]["code"] == "context_length_exceeded"
        assert client.post("/v1/completions", json={"prompt": "x", "max_tokens": 1}).status_code == 200
        time.sleep(TIMEOUT + 0.5)
        assert client.post("/v1/completions", json={"prompt": "x", "max_tokens": 1}).status_code == 200


def test_not_http_is_a_400_in_openai_shape(strict):
    with connect(strict) as sock:
        sock.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 hello, this is TLS\r\n\r\n")
        status, _, body = answer(sock)
    assert_openai_error(status, body, 400)


def test_connections_past_the_limit_get_503_with_retry_after(strict):
    wait_for(lambda: open_connections(strict.port) == 0)  # earlier tests' connections have closed
    held = [connect(strict) for _ in range(MAX_CONNECTIONS)]
    try:
        for sock in held:  # each a request begun, within the header timeout
            sock.sendall(b"GET /health HTTP/1.1\r\n")
        wait_for(lambda: open_connections(strict.port) == MAX_CONNECTIONS)
        with connect(strict) as extra:
            extra.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            status, headers, body = answer(extra)
        assert_openai_error(status, body, 503)
        assert headers["retry-after"] == "1"
    finally:
        for sock in held:
            sock.close()
    wait_for(lambda: open_connections(strict.port) == 0)
    assert healthy(strict)


def test_refusals_leave_no_traceback_in_the_log(strict):
    log = strict.output()
    assert "Traceback" not in log and "Exception in ASGI application" not in log
