"""The HTTP face of the engine: OpenAI's completions API, the model list, a health check, the playground.

    app = create_app(engine, bpe, model_name="gpt2_model", context=1024, api_key=None)
    uvicorn.run(app, host="127.0.0.1", port=8000)

    POST /v1/completions   OpenAI's legacy completions: prompt(s), n, stream (server-sent events ending
                           in `data: [DONE]`), logprobs, echo, stop, seed, usage; top_k and
                           repetition_penalty as extensions
    POST /v1/chat/completions  OpenAI's chat: messages through the model's chat template (a chat-tuned
                           vocab's markers, else the plain one, which the response names), n, stream,
                           stop, max_tokens / max_completion_tokens, temperature, top_p, seed, logprobs +
                           top_logprobs, usage
    GET  /v1/models        the one model this server holds (and /v1/models/{id}: it, or 404)
    GET  /health           liveness plus the engine's load (running, waiting, how sequences ended)
    GET  /                 the playground page (playground.html)
HEAD answers wherever GET does.

Every error is answered in OpenAI's shape with its status (400 bad request, 401 key, 404 model or
route, 413 body too large, 415 a body that is not JSON, 421 a Host not allowed, 429 queue full with
Retry-After, 500 a fault; below the app, http_limits.py answers 408, 431 and 503).
A request names a model only to be checked against the one loaded: nothing a client sends makes the
server read a file or load a model, and no answer is built from the client's Host header (no redirects).
"""
import asyncio
import json
import logging
import secrets
import time
import uuid
from dataclasses import replace
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from gpt2_llm.chat.template import PLAIN_TEMPLATE, STOPS, render, template_for
from gpt2_llm.serving.engine import Engine, QueueFull, Sequence, TokenEvent
from gpt2_llm.serving.schemas import MAX_BODY_BYTES, ApiError, CompletionRequest, parse_chat, parse_completion

DISCONNECT_POLL_SECONDS = 0.5  # how often a non-streaming request checks that its client is still there
RETRY_AFTER_SECONDS = 1  # a 429's advice: a queue slot frees as soon as any sequence ends
log = logging.getLogger("gpt2_llm.serving")


def create_app(engine: Engine, bpe, model_name: str, context: int, api_key: str | None = None,
               allowed_hosts: tuple[str, ...] | None = None) -> FastAPI:
    # redirect_slashes off: Starlette would answer /v1/completions/ with a redirect whose Location it builds from
    # the client's own Host header.
    app = FastAPI(title="gpt2-llm", docs_url=None, redoc_url=None, openapi_url=None, redirect_slashes=False)
    if allowed_hosts is not None:
        app.add_middleware(HostCheck, allowed_hosts=allowed_hosts)
    playground = resources.files("gpt2_llm.serving").joinpath("playground.html").read_text(encoding="utf-8")
    texts = TokenTexts(bpe)
    created = int(time.time())

    @app.exception_handler(ApiError)
    async def api_error(request, error: ApiError):
        headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if error.status == 429 else None
        return JSONResponse(error.body(), status_code=error.status, headers=headers)

    @app.exception_handler(HTTPException)
    async def http_error(request, error: HTTPException):  # unknown route, wrong method
        return JSONResponse(ApiError(error.status_code, str(error.detail)).body(), status_code=error.status_code)

    @app.exception_handler(Exception)
    async def fault(request, error: Exception):  # logged by uvicorn; the server keeps answering
        return JSONResponse(ApiError(500, f"internal error: {type(error).__name__}").body(), status_code=500)

    def authorize(request: Request) -> None:
        """The /v1/ routes want the key (the page and /health do not: the page asks for it)."""
        if api_key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.strip().partition(" ")  # the scheme is case-insensitive (RFC 9110): bearer, Bearer
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), api_key.encode()):
            what = "a wrong API key" if given else "no API key"
            raise ApiError(401, f"{what}: send the server's --api-key as 'Authorization: Bearer KEY'",
                           code="invalid_api_key")

    model_card = {"id": model_name, "object": "model", "created": created, "owned_by": "gpt2-llm",
                  "max_model_len": context}

    @app.api_route("/", methods=["GET", "HEAD"], response_class=HTMLResponse)
    async def page():
        return playground

    @app.api_route("/health", methods=["GET", "HEAD"])
    async def health():
        return {"status": "ok", "model": model_name, **engine.load()}

    @app.api_route("/v1/models", methods=["GET", "HEAD"])
    async def models(request: Request):
        authorize(request)
        return {"object": "list", "data": [model_card]}

    @app.api_route("/v1/models/{model_id:path}", methods=["GET", "HEAD"])
    async def model(model_id: str, request: Request):
        authorize(request)
        if model_id != model_name:
            raise ApiError(404, f"the model {model_id!r} does not exist; this server holds {model_name!r}", "model",
                           "model_not_found")
        return model_card

    def check_model(name: str | None) -> None:
        """A request names a model only to be checked against the one loaded."""
        if name is not None and name != model_name:
            raise ApiError(404, f"the model {name!r} does not exist; this server holds {model_name!r} "
                                "(GET /v1/models)", "model", "model_not_found")

    async def answer(run: "Completion", request: Request):
        """Queue a request's sequences and answer: a stream of events, or the whole response when done."""
        capacity = engine.max_batch + engine.max_queue
        if len(run.sequences) > capacity:  # could never be queued: not a 429 to retry
            raise ApiError(400, f"the request asks for {len(run.sequences)} sequences (prompts x n); this server "
                                f"holds at most {capacity} at once", "n")
        try:
            engine.submit(run.sequences)
        except QueueFull as full:
            raise ApiError(429, str(full), code="queue_full") from None
        if run.params.stream:
            return StreamingResponse(run.stream(), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return await run.collect(request)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        authorize(request)
        params = parse_chat(await read_json(request), max_tokens_cap=context)
        check_model(params.model)
        template = template_for(bpe)
        ids, _ = render(params.messages, bpe, template, add_generation_prompt=True)
        max_tokens = params.max_tokens or max(1, context - len(ids))
        settings = replace(params.settings, max_tokens=max_tokens, stop=params.settings.stop + STOPS[template])
        completion = CompletionRequest(params.model, [ids], params.n, False, params.stream, params.include_usage,
                                       settings)
        prompt = prompt_ids(ids, bpe, context, max_tokens)
        return await answer(ChatCompletion(engine, completion, [prompt], model_name, texts, template), request)

    @app.post("/v1/completions")
    async def completions(request: Request):
        authorize(request)
        params = parse_completion(await read_json(request), max_tokens_cap=context)
        check_model(params.model)
        prompts = [prompt_ids(p, bpe, context, params.settings.max_tokens) for p in params.prompts]
        return await answer(Completion(engine, params, prompts, model_name, texts), request)

    return app


class HostCheck:
    """ASGI middleware: a request whose Host header names none of allowed_hosts (port aside) gets 421 in OpenAI's
    shape. On a loopback address that stops DNS rebinding: a web page whose name resolves to 127.0.0.1 still sends
    its own name as the Host.

    host_name("[::1]:8000") -> "::1"; host_name("localhost:8000") -> "localhost"
    """

    def __init__(self, app, allowed_hosts: tuple[str, ...]):
        self.app, self.allowed = app, {name.lower() for name in allowed_hosts}

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
            if host_name(host) not in self.allowed:
                error = ApiError(421, f"this server does not answer for the host {host!r}; serve --allowed-host NAME "
                                      "adds a name (a reverse proxy's)")
                await JSONResponse(error.body(), status_code=421)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def host_name(host: str) -> str:
    """A Host header's name without its port, lower case."""
    host = host.strip().lower()
    if host.startswith("["):  # an IPv6 literal: [::1]:8000
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


async def read_json(request: Request):
    """The body as JSON, refused if its Content-Type is not JSON (415: a web page's cross-origin "simple" POST is
    text/plain, and must not start a generation), past MAX_BODY_BYTES (413) or not JSON (400)."""
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != "application/json":
        raise ApiError(415, f"the request body must be JSON, sent with 'Content-Type: application/json' (got "
                            f"{media_type or 'none'!r})")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise ApiError(413, f"the request body is larger than {MAX_BODY_BYTES} bytes")
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                raise ApiError(413, f"the request body is larger than {MAX_BODY_BYTES} bytes")
    except ClientDisconnect:  # hung up mid-body, or too slow (http_limits answered 408): one quiet line
        log.info("a request body did not arrive whole: the client hung up or ran past --body-timeout")
        raise ApiError(400, "the client disconnected before sending its whole body") from None
    try:
        return json.loads(body)
    except ValueError as error:  # not UTF-8 or not JSON, or an integer past Python's digit limit (4300)
        raise ApiError(400, f"the request body is not valid JSON: {error}") from None
    except RecursionError:  # "[[[[...": nested deeper than the parser goes
        raise ApiError(400, "the request body is JSON nested too deeply") from None


def prompt_ids(prompt, bpe, context: int, max_tokens: int) -> list[int]:
    """A prompt (text or ids) -> ids, checked against the vocabulary and the context. "" is <|endoftext|>,
    the start of a document, as in `predict`."""
    if isinstance(prompt, str):
        ids = bpe.encode(prompt, allowed_special="all") if prompt else [bpe.eot_id]
    else:
        ids = prompt
        if any(not 0 <= t < bpe.vocab_size for t in ids):
            raise ApiError(400, f"token ids must be between 0 and {bpe.vocab_size - 1}", "prompt")
    if len(ids) + max_tokens > context:
        raise ApiError(400, f"this model's maximum context length is {context} tokens; the prompt has {len(ids)} "
                            f"and max_tokens asks for {max_tokens} more: shorten the prompt or lower max_tokens",
                       "max_tokens" if len(ids) < context else "prompt", "context_length_exceeded")
    return ids


class TokenTexts:
    """Token id -> the string shown for it in logprobs (a special token its name); a piece of a UTF-8 character
    shows its bytes ("\\xe2")."""

    def __init__(self, bpe):
        self.token_bytes = bpe.token_bytes()
        self.eot_id = bpe.eot_id
        self.specials = {token_id: name for name, token_id in bpe.special_tokens.items()}  # <|endoftext|>, <|end|>...

    def __call__(self, token_id: int) -> str:
        if token_id in self.specials:
            return self.specials[token_id]
        return self.token_bytes[token_id].decode("utf-8", errors="backslashreplace")

    def decode(self, ids: list[int]) -> str:
        """A prompt's ids -> its text, special tokens spelled out as the client wrote them."""
        pieces, run = [], b""
        for token_id in ids:
            if token_id in self.specials:
                pieces.append(run.decode("utf-8", errors="replace") + self.specials[token_id])
                run = b""
            else:
                run += self.token_bytes[token_id]
        return "".join(pieces) + run.decode("utf-8", errors="replace")


class Completion:
    """One request's sequences (prompt-major: choice index = prompt * n + j) and the events they send back."""

    def __init__(self, engine: Engine, params: CompletionRequest, prompts: list[list[int]], model_name: str, texts):
        self.engine, self.params, self.texts = engine, params, texts
        self.id = f"cmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model_name = model_name
        self.events: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        score_prompt = params.echo and params.settings.logprobs is not None
        self.sequences = []
        for ids in prompts:
            for j in range(params.n):
                sequence = Sequence(ids, params.settings, None, seed_offset=j, score_prompt=score_prompt)
                sequence.on_token = self._deliver(loop, len(self.sequences), sequence)
                self.sequences.append(sequence)
        self.text_lengths = [0] * len(self.sequences)  # characters sent so far per choice (text_offset)
        self.done = [False] * len(self.sequences)

    def _deliver(self, loop, index: int, sequence: Sequence):
        """The engine thread's callback for one sequence: hand the event over to this request's event loop."""
        def deliver(event: TokenEvent) -> None:
            try:
                loop.call_soon_threadsafe(self.events.put_nowait, (index, event))
            except RuntimeError:  # the event loop is closed (server shutting down): nobody is listening
                sequence.cancelled = True
        return deliver

    async def stream(self):
        """Server-sent events: a chunk per token per choice, then usage if asked, then [DONE]."""
        head = json.dumps(self._chunk([]), ensure_ascii=False)[: -len("[]}")]  # '{"id": ..., "choices": '
        try:
            started = [False] * len(self.sequences)
            while not all(self.done):
                index, event = await self.events.get()
                if self.params.echo and not started[index]:  # the prompt first, as OpenAI sends it; its scores
                    # (echo + logprobs) exist once the engine has run the prompt, which it has by the first token
                    yield self._sse(head, self._choice(index, *self._echo(index), None))
                started[index] = True
                self.done[index] = event.finish_reason is not None
                yield self._sse(head, self._choice(index, event.text, [event], event.finish_reason))
            if self.params.include_usage:
                yield f"data: {json.dumps({**self._chunk([]), 'usage': self._usage()}, ensure_ascii=False)}\n\n"
            yield "data: [DONE]\n\n"
        finally:  # also when the client left (the generator is closed): free the slots at once
            self._cancel_unfinished()

    async def collect(self, request: Request) -> dict:
        """The whole response at once; a client that hangs up meanwhile frees its slots."""
        parts = [[] for _ in self.sequences]  # (text, events) per choice
        finish = [None] * len(self.sequences)
        try:
            while not all(self.done):
                try:
                    index, event = await asyncio.wait_for(self.events.get(), DISCONNECT_POLL_SECONDS)
                except asyncio.TimeoutError:  # (TimeoutError itself only from Python 3.11)
                    if await request.is_disconnected():
                        return {}
                    continue
                parts[index].append((event.text, [event]))
                finish[index] = event.finish_reason
                self.done[index] = event.finish_reason is not None
        finally:
            self._cancel_unfinished()
        choices = []
        for index, pieces in enumerate(parts):
            if self.params.echo:
                pieces.insert(0, self._echo(index))
            text = "".join(t for t, _ in pieces)
            events = [e for _, group in pieces for e in group]
            choices.append(self._choice(index, text, events, finish[index]))
        return {**self._chunk(choices), "usage": self._usage()}

    def _echo(self, index: int) -> tuple[str, list[TokenEvent]]:
        """(choice index's prompt exactly as the client sent it, its events for logprobs: scored by the engine when
        logprobs were asked for). An empty prompt echoes as "": the <|endoftext|> it starts from is not the client's."""
        sequence, prompt = self.sequences[index], self.params.prompts[index // self.params.n]
        if prompt == "":
            return "", []
        ids = sequence.prompt_ids
        scored = sequence.prompt_events or [TokenEvent(t, "") for t in ids]
        text = prompt if isinstance(prompt, str) else self.texts.decode(ids)
        return text, [replace(e, text=self.texts(e.token_id)) for e in scored]  # for text_offset

    def _choice(self, index: int, text: str, events: list[TokenEvent], finish_reason) -> dict:
        logprobs = None
        if self.params.settings.logprobs is not None:
            logprobs = self._logprobs(index, events)
        self.text_lengths[index] += len(text)
        return {"text": text, "index": index, "logprobs": logprobs, "finish_reason": finish_reason}

    def _logprobs(self, index: int, events: list[TokenEvent]) -> dict:
        """OpenAI's completions logprobs: tokens, their logprobs, the top alternatives, their text offsets."""
        offset = self.text_lengths[index]
        result = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        for event in events:
            if event.token_id is None:  # a finish without a token (max_tokens 0, a failed sequence): nothing to score
                continue
            result["tokens"].append(self.texts(event.token_id))
            result["token_logprobs"].append(event.logprob)
            result["top_logprobs"].append(None if event.top_logprobs is None else
                                          {self.texts(t): lp for t, lp in event.top_logprobs})
            result["text_offset"].append(offset)
            offset += len(event.text)
        return result

    def _chunk(self, choices: list[dict]) -> dict:
        return {"id": self.id, "object": "text_completion", "created": self.created, "model": self.model_name,
                "choices": choices}

    def _usage(self) -> dict:
        prompt = sum(len(s.prompt_ids) for s in self.sequences[:: self.params.n])  # each prompt counted once
        completion = sum(s.generated for s in self.sequences)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    @staticmethod
    def _sse(head: str, choice: dict) -> str:
        """One server-sent event of one choice; per token, so only the choice is serialized each time."""
        return f"data: {head}[{json.dumps(choice, ensure_ascii=False)}]}}\n\n"

    def _cancel_unfinished(self) -> None:
        for sequence, done in zip(self.sequences, self.done):
            if not done:
                self.engine.cancel(sequence)



class ChatCompletion(Completion):
    """A chat request's choices, in OpenAI's chat shapes: a message per choice (or deltas when streaming), and
    logprobs as a list of {token, logprob, bytes, top_logprobs} per token. A model never chat-tuned answers through
    the plain template, and the response says so ("chat_template": "plain", beside OpenAI's fields)."""

    def __init__(self, engine, params, prompts, model_name, texts, template: str):
        super().__init__(engine, params, prompts, model_name, texts)
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.template = template
        self.greeted = [False] * len(self.sequences)  # the first streamed chunk of a choice names the role

    def _chunk(self, choices: list[dict]) -> dict:
        chunk = {"id": self.id, "object": "chat.completion.chunk" if self.params.stream else "chat.completion",
                 "created": self.created, "model": self.model_name}
        if self.template == PLAIN_TEMPLATE:
            chunk["chat_template"] = PLAIN_TEMPLATE
        return {**chunk, "choices": choices}  # choices last: stream() sends the rest as a fixed head

    def _choice(self, index: int, text: str, events: list[TokenEvent], finish_reason) -> dict:
        logprobs = None
        if self.params.settings.logprobs is not None:
            logprobs = {"content": [self._token_logprob(e.token_id, e.logprob, e.top_logprobs) for e in events
                                    if e.token_id is not None and e.token_id < self.texts.eot_id]}
        if not self.params.stream:
            return {"index": index, "message": {"role": "assistant", "content": text}, "logprobs": logprobs,
                    "finish_reason": finish_reason}
        delta = {"content": text} if text or finish_reason is None else {}
        if not self.greeted[index]:
            delta, self.greeted[index] = {"role": "assistant", **delta}, True
        return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}

    def _token_logprob(self, token_id: int, logprob: float | None, top: list | None) -> dict:
        piece = self.texts.token_bytes.get(token_id, b"")
        entry = {"token": self.texts(token_id), "logprob": logprob, "bytes": list(piece)}
        if top is not None:
            entry["top_logprobs"] = [{"token": self.texts(t), "logprob": lp,
                                      "bytes": list(self.texts.token_bytes.get(t, b""))} for t, lp in top]
        return entry
