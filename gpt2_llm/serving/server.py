"""Running `serve`: the listening socket, HTTP in a thread of its own, and decoding in the thread that loaded the
model (engine.py says why), until Ctrl-C or the HTTP server stops.

    listener = listen("127.0.0.1", 8000)       # a taken port fails before the slow model load
    run_server(engine, create_app(engine, ...), listener, HttpLimits(...))
"""
import socket
import sys
import threading

from gpt2_llm.errors import UserError
from gpt2_llm.serving.http_limits import HttpLimits, limited_http_protocol


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on host:port, or UserError saying why not (taken, no such address)."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        return socket.create_server((host, port), family=family, backlog=2048)
    except OSError as error:
        raise UserError(f"cannot listen on {host}:{port}: {error.strerror or error}; pick another --port or --host")


def run_server(engine, app, listener: socket.socket, limits: HttpLimits) -> None:
    """Answer HTTP on listener (uvicorn, in a thread, each connection held to limits) and decode in this thread
    until either stops."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", http=limited_http_protocol(limits)))

    def answer_http():
        try:
            server.run(sockets=[listener])
        finally:  # the server stopped (or never started): so does the decoding
            engine.close()

    http = threading.Thread(target=answer_http, name="http", daemon=True)
    http.start()
    try:
        engine.run()
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    finally:
        server.should_exit = True
        http.join(timeout=10)
