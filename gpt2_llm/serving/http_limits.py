"""Limits below the application: what one connection may cost before FastAPI sees a request.

    protocol = limited_http_protocol(HttpLimits(max_header_bytes=32768, header_timeout=10, body_timeout=60,
                                                max_connections=512))
    uvicorn.Config(app, http=protocol)

uvicorn's own HTTP/1.1 protocol (httptools) sets no limit on the size of the headers and no time limit on receiving
them or the body: one client could make the server hold a 64 MB header, or keep a connection open for ever by
sending a byte now and then. This subclass adds, per connection:

    request line + headers past max_header_bytes    431, before the rest is read
    headers not whole header_timeout s after the connection opened or the request's first byte    408
    body not whole body_timeout s after the headers    408 (the body is what Content-Length promised)
    a connection past max_connections open    503 with Retry-After, at once

Each refusal is a JSON body in OpenAI's error shape, sent before a "lingering" close: the server stops writing,
reads and drops what the client still sends for at most LINGER_SECONDS, then closes, so that the client reads the
answer instead of a reset connection. Idle keep-alive connections are closed by uvicorn (timeout_keep_alive).
"""
import json
import logging
import time
from dataclasses import dataclass
from http import HTTPStatus

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gpt2_llm.serving.schemas import ApiError

LINGER_SECONDS = 1.0  # after a refusal: time for the client to finish sending and read the answer
WARN_EVERY_SECONDS = 60.0  # the connection limit's warning, at most this often
log = logging.getLogger("gpt2_llm.serving")


@dataclass(frozen=True)
class HttpLimits:
    """serve's --max-header-bytes, --header-timeout, --body-timeout and --max-connections (defaults there)."""
    max_header_bytes: int
    header_timeout: float  # seconds
    body_timeout: float
    max_connections: int


def limited_http_protocol(limits: HttpLimits) -> type:
    """uvicorn's httptools protocol class with these limits (uvicorn makes one per connection from a class)."""
    return type("LimitedHttpProtocol", (LimitedHttpProtocol,), {"limits": limits})


class LimitedHttpProtocol(HttpToolsProtocol):
    """One connection: uvicorn's parsing and ASGI cycle, with a byte count and a deadline while a request arrives.

    phase: "idle" (between requests), "headers" (a request begun), "body" (headers whole, body arriving),
    "refused" (answered with an error; what arrives now is dropped)
    """

    limits: HttpLimits  # set by limited_http_protocol
    last_warning = [0.0]  # when the connection limit was last logged (shared by every connection)

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self.phase, self.header_bytes, self.deadline = "idle", 0, None
        if len(self.connections) > self.limits.max_connections:
            now = time.monotonic()
            if now - self.last_warning[0] > WARN_EVERY_SECONDS:
                self.last_warning[0] = now
                log.warning("more than %d connections are open: answering 503 to new ones (serve --max-connections)",
                            self.limits.max_connections)
            self.refuse(503, f"this server has {self.limits.max_connections} connections open, its limit; retry "
                             "shortly", retry_after=1)
            return
        self.arm(self.limits.header_timeout)

    def connection_lost(self, exc) -> None:
        self.disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.phase == "refused":
            return
        if self.phase != "body":
            self.header_bytes += len(data)
        super().data_received(data)
        if self.phase in ("idle", "headers") and self.header_bytes > self.limits.max_header_bytes:
            self.refuse_large_headers()  # still no end of headers: refused before the parser holds more
        elif self.phase == "too large":
            self.refuse_large_headers()

    def send_400_response(self, msg: str) -> None:  # httptools could not parse the request
        self.refuse(400, f"the request is not valid HTTP/1.1: {msg}")

    # Parser callbacks
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.phase = "headers"
        if self.deadline is None:  # a kept-alive connection's next request
            self.arm(self.limits.header_timeout)

    def on_headers_complete(self) -> None:
        self.header_bytes = 0
        size = len(self.url) + sum(len(name) + len(value) for name, value in self.headers)
        if size > self.limits.max_header_bytes:  # the whole headers came in one read: refuse them, start nothing
            self.phase = "too large"
            return
        self.phase = "body"
        self.arm(self.limits.body_timeout)
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if self.phase == "body":
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self.phase == "body":
            self.phase = "idle"
            self.disarm()
            super().on_message_complete()

    # Limits
    def arm(self, seconds: float) -> None:
        self.disarm()
        self.deadline = self.loop.call_later(seconds, self.too_slow)

    def disarm(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def too_slow(self) -> None:
        self.deadline = None
        if self.phase == "idle":  # connected, sent nothing: nothing to answer
            self.transport.close()
        elif self.phase == "headers":
            self.refuse(408, f"the request's headers did not arrive within {self.limits.header_timeout:g} s")
        elif self.phase == "body":
            self.refuse(408, f"the request's body did not arrive within {self.limits.body_timeout:g} s of its "
                             "headers (is Content-Length right?)")

    def refuse_large_headers(self) -> None:
        self.refuse(431, f"the request line and headers are larger than {self.limits.max_header_bytes} bytes")

    def refuse(self, status: int, message: str, retry_after: int | None = None) -> None:
        """Answer status in OpenAI's error shape (unless a response is already under way), then close lingering."""
        self.phase = "refused"
        self.disarm()
        if self.transport.is_closing():
            return
        answering = self.cycle is not None and not self.cycle.response_complete
        if answering and self.cycle.response_started:  # mid-answer: nothing more can be said on this connection
            self.transport.close()
            return
        if answering:  # the app waits for a body that will not come: it sees a disconnect, sends nothing
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        body = json.dumps(ApiError(status, message).body()).encode()
        head = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", "content-type: application/json",
                f"content-length: {len(body)}", "connection: close"]
        if retry_after is not None:
            head.append(f"retry-after: {retry_after}")
        self.transport.write("\r\n".join(head).encode("latin-1") + b"\r\n\r\n" + body)
        if self.transport.can_write_eof():
            self.transport.write_eof()  # sent once the answer is; the client's bytes are read and dropped
            self.transport.resume_reading()
            self.loop.call_later(LINGER_SECONDS, self.transport.close)
        else:
            self.transport.close()
