"""`serve`: an OpenAI-compatible HTTP server over one model, decoding its requests in one batch.

    slots.py          a batch of slots, each a sequence at its own position, on the model's own forward pass
    engine.py         continuous batching: the decode thread, admission, per-sequence sampling and stop rules
    schemas.py        a request's JSON -> checked settings, or an error in OpenAI's shape
    http_limits.py    limits on each connection: header size, time for headers and body, open connections
    server.py         the listening socket, HTTP in a thread, decoding in the loading thread
    api.py            the FastAPI app: /v1/completions and /v1/chat/completions (+ streaming), /v1/models,
                      /health, the playground
    playground.html   the page at /: text as it streams, and each token's top alternatives

FastAPI and uvicorn are optional (requirements-serve.txt): only api.py, http_limits.py and server.py import them.
"""
