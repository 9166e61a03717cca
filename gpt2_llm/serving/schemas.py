"""A completion request's JSON -> checked settings, or an ApiError in OpenAI's error shape.

    parse_completion(json.loads(body), limits) -> CompletionRequest(prompts=[...], n=1, settings=...)

Everything a client sends is checked here, with OpenAI's ranges and types, before any work is done:
a wrong type or a value out of range is a 400 naming the field, never a crash deeper in. The caps
(LIMITS) keep one request from holding the server: prompts, choices, stop strings and logprobs are
bounded, and max_tokens by the model's context (checked once the prompt is tokenized, in api.py).
"""
import dataclasses
import math
from dataclasses import dataclass

from gpt2_llm.infer.sampling import SamplingSettings

MAX_BODY_BYTES = 1 << 20  # a request body past 1 MiB is refused unread
MAX_PROMPTS = 32  # prompts in one request (a list)
MAX_N = 16  # choices per prompt
MAX_STOPS = 4  # OpenAI's limit
MAX_STOP_CHARS = 256
MAX_LOGPROBS = 20  # alternatives reported per token (OpenAI allows 5)
MAX_SEED = 2**63 - 1 - MAX_N  # choice i draws with seed + i, which must fit torch's 64-bit seed
# Fields of OpenAI's API this server does not implement, and the value that means "not used".
UNSUPPORTED = {"suffix": None, "logit_bias": None, "presence_penalty": 0, "frequency_penalty": 0}


class ApiError(Exception):
    """An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}} with this status."""

    TYPES = {429: "rate_limit_exceeded", 500: "server_error", 503: "server_error"}  # any other: invalid_request_error

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.TYPES.get(self.status, "invalid_request_error"),
                          "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class CompletionRequest:
    model: str | None
    prompts: list  # each a string or a list of token ids
    n: int
    echo: bool
    stream: bool
    include_usage: bool  # stream_options.include_usage: a last chunk with the usage counts
    settings: SamplingSettings


def parse_completion(body, max_tokens_cap: int) -> CompletionRequest:
    """Check a decoded JSON body -> CompletionRequest; any mistake -> ApiError(400) naming the field."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    for name, unused in UNSUPPORTED.items():
        if body.get(name, unused) not in (unused, {}):
            raise ApiError(400, f"{name} is not supported by this server; leave it out", name, "unsupported")
    n = integer(body, "n", 1, 1, MAX_N)
    best_of = body.get("best_of")
    if best_of is not None and best_of != n:
        raise ApiError(400, "best_of is not supported by this server; leave it out (or equal to n)", "best_of")
    stops = stop_list(body)
    top_k = integer(body, "top_k", None, 0, None)
    stream_options = stream_options_of(body)
    model = model_of(body)
    echo = boolean(body, "echo")
    settings = SamplingSettings(
        # 0 only with echo: the prompt scored and nothing generated, what evaluation harnesses send for log-likelihoods
        max_tokens=integer(body, "max_tokens", 16, 0 if echo else 1, max_tokens_cap),
        temperature=number(body, "temperature", 1.0, 0.0, 2.0),
        top_k=top_k or None,  # 0: off
        top_p=number(body, "top_p", 1.0, 0.0, 1.0, exclusive_low=True),
        repetition_penalty=number(body, "repetition_penalty", 1.0, 0.0, 10.0, exclusive_low=True),
        seed=integer(body, "seed", None, 0, MAX_SEED),
        stop=tuple(stops),
        logprobs=integer(body, "logprobs", None, 0, MAX_LOGPROBS),
    )
    if settings.top_p == 1.0:
        settings = dataclasses.replace(settings, top_p=None)
    return CompletionRequest(model=model, prompts=prompt_list(body.get("prompt", "")), n=n,
                             echo=echo, stream=boolean(body, "stream"),
                             include_usage=boolean(stream_options, "include_usage"), settings=settings)


@dataclass(frozen=True)
class ChatRequest:
    model: str | None
    messages: list  # chat.template.Message, checked
    n: int
    stream: bool
    include_usage: bool
    max_tokens: int | None  # None: as many as the context leaves after the prompt
    settings: SamplingSettings  # max_tokens to be set once the prompt's length is known


# Chat fields of OpenAI's API this server does not implement, and the value that means "not used".
CHAT_UNSUPPORTED = {"tools": None, "tool_choice": None, "functions": None, "function_call": None,
                    "logit_bias": None, "presence_penalty": 0, "frequency_penalty": 0, "audio": None,
                    "prediction": None}


def parse_chat(body, max_tokens_cap: int) -> ChatRequest:
    """Check a decoded /v1/chat/completions body -> ChatRequest; any mistake -> ApiError(400) naming the field."""
    from gpt2_llm.chat.template import check_messages
    from gpt2_llm.errors import UserError

    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    for name, unused in CHAT_UNSUPPORTED.items():
        if body.get(name, unused) not in (unused, {}, []):
            raise ApiError(400, f"{name} is not supported by this server; leave it out", name, "unsupported")
    response_format = body.get("response_format")
    if response_format not in (None, {"type": "text"}):
        raise ApiError(400, "response_format: only {\"type\": \"text\"} is supported", "response_format",
                       "unsupported")
    try:
        messages = check_messages(body.get("messages"))
    except UserError as error:
        raise ApiError(400, str(error), "messages") from None
    stream_options = stream_options_of(body)
    max_tokens = integer(body, "max_completion_tokens", None, 1, max_tokens_cap)
    max_tokens = integer(body, "max_tokens", max_tokens, 1, max_tokens_cap)
    top_logprobs = integer(body, "top_logprobs", None, 0, MAX_LOGPROBS)
    logprobs = boolean(body, "logprobs")
    if top_logprobs is not None and not logprobs:
        raise ApiError(400, "top_logprobs needs logprobs: true", "top_logprobs")
    settings = SamplingSettings(
        max_tokens=1,
        temperature=number(body, "temperature", 1.0, 0.0, 2.0),
        top_k=integer(body, "top_k", None, 0, None) or None,
        top_p=number(body, "top_p", 1.0, 0.0, 1.0, exclusive_low=True),
        repetition_penalty=number(body, "repetition_penalty", 1.0, 0.0, 10.0, exclusive_low=True),
        seed=integer(body, "seed", None, 0, MAX_SEED),
        stop=tuple(stop_list(body)),
        logprobs=(top_logprobs or 0) if logprobs else None,
    )
    if settings.top_p == 1.0:
        settings = dataclasses.replace(settings, top_p=None)
    return ChatRequest(model=model_of(body), messages=messages, n=integer(body, "n", 1, 1, MAX_N),
                       stream=boolean(body, "stream"), include_usage=boolean(stream_options, "include_usage"),
                       max_tokens=max_tokens, settings=settings)


def stop_list(body: dict) -> list[str]:
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else stop if stop is not None else []
    if not isinstance(stops, list) or not all(isinstance(s, str) and 0 < len(s) <= MAX_STOP_CHARS for s in stops) \
            or len(stops) > MAX_STOPS:
        raise ApiError(400, f"stop must be a string or a list of at most {MAX_STOPS} non-empty strings of up to "
                            f"{MAX_STOP_CHARS} characters", "stop")
    return stops


def stream_options_of(body: dict) -> dict:
    stream_options = body.get("stream_options") or {}
    if not isinstance(stream_options, dict):
        raise ApiError(400, "stream_options must be an object", "stream_options")
    return stream_options


def model_of(body: dict) -> str | None:
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise ApiError(400, "model must be a string", "model")
    return model


def prompt_list(prompt) -> list:
    """OpenAI's four prompt forms -> a list of prompts, each a string or a list of ids.

    prompt_list("hi") -> ["hi"];  prompt_list([1, 2]) -> [[1, 2]];  prompt_list(["a", "b"]) -> ["a", "b"]
    """
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt and all(is_int(t) for t in prompt):
        return [prompt]
    if isinstance(prompt, list) and 0 < len(prompt) <= MAX_PROMPTS and all(
            isinstance(p, str) or (isinstance(p, list) and p and all(is_int(t) for t in p)) for p in prompt):
        return prompt
    raise ApiError(400, f"prompt must be a string, a list of token ids, or a list of 1 to {MAX_PROMPTS} of "
                        "either", "prompt")


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def integer(body: dict, name: str, default, low: int, high: int | None):
    """body[name] as an int in [low, high] (null or missing: default); integer({"n": 2}, "n", 1, 1, 16) -> 2"""
    value = body.get(name)
    if value is None:
        return default
    if not is_int(value) or value < low or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f">= {low}"
        raise ApiError(400, f"{name} must be an integer {bounds}, got {value!r}", name)
    return value


def number(body: dict, name: str, default: float, low: float, high: float, exclusive_low=False) -> float:
    """body[name] as a float in [low, high] ((low, high] with exclusive_low); null or missing: default."""
    value = body.get(name)
    if value is None:
        return default
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value > high or value < low or (exclusive_low and value == low):
        bounds = f"in ({low}, {high}]" if exclusive_low else f"between {low} and {high}"
        raise ApiError(400, f"{name} must be a number {bounds}, got {value!r}", name)
    return float(value)


def boolean(body: dict, name: str) -> bool:
    value = body.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ApiError(400, f"{name} must be true or false, got {value!r}", name)
    return value
