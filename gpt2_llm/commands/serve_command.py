"""`serve [model] [vocab]`: an OpenAI-compatible HTTP server with batched decoding and a playground page.

    python main.py serve                                    # gpt2_model.pt + vocab.txt on http://127.0.0.1:8000
    python main.py serve --pretrained gpt2/ --quantize int8 --max-batch 16
    GPT2_LLM_API_KEY=... python main.py serve --host 0.0.0.0  # reachable from other machines: require a key

The server, its engine and its page live in gpt2_llm/serving/ (FastAPI + uvicorn, the optional
dependencies of requirements-serve.txt). Flags are checked before anything is imported or loaded,
so that a bad one is a one-line error (exit 2), not a traceback.
"""
import os
import sys
from pathlib import Path

from gpt2_llm.commands.common import check_inference_weights, parse_number
from gpt2_llm.errors import UserError

MAX_BATCH = 256
MAX_QUEUE = 100_000
LOOPBACK = ("127.0.0.1", "localhost", "::1")
API_KEY_VARIABLE = "GPT2_LLM_API_KEY"  # the key from the environment, not the command line
MAX_HEADER_BYTES = 32 * 1024  # Node's is 16 KiB; a browser sends localhost's cookies from every port's apps
HEADER_TIMEOUT = 10.0  # seconds; real clients send their headers in one packet
BODY_TIMEOUT = 60.0  # a 1 MiB body (the largest accepted) at 17 KB/s
MAX_CONNECTIONS = 512  # well above --max-batch + --max-queue, below a default ulimit of 1024 files


def add_arguments(name, parser):
    parser.add_argument("model", nargs="?", default=None, help="checkpoint file (default: gpt2_model.pt)")
    parser.add_argument("vocab", nargs="?", default=None,
                        help="vocab file the model was trained with (default: vocab.txt)")
    where = parser.add_argument_group("model, device and precision (as for predict)")
    where.add_argument("--pretrained", metavar="DIR", default=None,
                       help="a Hugging Face GPT-2 directory instead of a checkpoint and vocab")
    where.add_argument("--adapter", metavar="FILE", default=None,
                       help="a LoRA adapter file to merge into the model (default model: the base it was trained on)")
    where.add_argument("--dtype", default=None, help="fp32 or bf16 weights (default: fp32, the numbers transformers computes; bf16 reads half the bytes)")
    where.add_argument("--quantize", default=None, metavar="int8", help="int8: weight-only int8 Linear layers (CPU)")
    where.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: cuda, then mps, then cpu)")
    server = parser.add_argument_group("server")
    server.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0: every interface)")
    server.add_argument("--port", default="8000", help="TCP port (default 8000)")
    server.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                        help="on a loopback address, a Host name to answer besides localhost and 127.0.0.1 (a "
                             "reverse proxy's); requests naming any other host get 421, so that a web page cannot "
                             "reach this server by DNS rebinding; repeatable")
    server.add_argument("--max-batch", default="8",
                        help="sequences decoded together; more wait in the queue (default 8). Each slot holds keys "
                             "and values for the whole context: 75 MB for GPT-2 small")
    server.add_argument("--max-queue", default="64",
                        help="sequences that may wait for a batch slot; past it requests get 429 (default 64)")
    limits = parser.add_argument_group("limits on each connection (answered in OpenAI's error shape)")
    limits.add_argument("--max-header-bytes", default=str(MAX_HEADER_BYTES),
                        help=f"request line and headers larger than this get 431 (default {MAX_HEADER_BYTES})")
    limits.add_argument("--header-timeout", default=str(HEADER_TIMEOUT), metavar="SECONDS",
                        help="headers not whole this long after the connection opens or the request begins get 408 "
                             f"(default {HEADER_TIMEOUT:g})")
    limits.add_argument("--body-timeout", default=str(BODY_TIMEOUT), metavar="SECONDS",
                        help="a body not whole this long after its headers gets 408; bodies are at most 1 MiB "
                             f"(default {BODY_TIMEOUT:g})")
    limits.add_argument("--max-connections", default=str(MAX_CONNECTIONS),
                        help=f"open connections past this get 503 with Retry-After (default {MAX_CONNECTIONS})")
    server.add_argument("--api-key", default=os.environ.get(API_KEY_VARIABLE) or None, metavar="KEY",
                        help="require 'Authorization: Bearer KEY' on /v1/ requests (the playground asks for it); "
                             f"default: ${API_KEY_VARIABLE}, which `ps` does not show to other users as it does "
                             "a command line")


def run(args):
    options = parse_options(args)
    try:
        import fastapi  # noqa: F401  (only to say what is missing before anything slow)
        import uvicorn  # noqa: F401
        import httptools  # noqa: F401  (the HTTP parser the connection limits are built on)
    except ImportError as missing:
        raise UserError(f"serve needs FastAPI and uvicorn ({missing.name} is missing): "
                        "pip install -r requirements-serve.txt") from None
    from gpt2_llm.load import load_model_and_vocab
    from gpt2_llm.device import DTYPES, pick_device
    from gpt2_llm.infer.prepare import int8_kernel
    from gpt2_llm.serving.api import create_app
    from gpt2_llm.serving.http_limits import HttpLimits
    from gpt2_llm.serving.server import listen, run_server
    from gpt2_llm.serving.slots import prepare_for_batches
    from gpt2_llm.serving.engine import Engine

    warning = exposure_warning(options["host"], args.api_key)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    device = pick_device(args.device)
    if args.quantize and device.type == "cpu" and int8_kernel(device).name is None:
        print(f"note: {int8_kernel(device).reason}", file=sys.stderr)  # it serves unquantized weights instead
    listener = listen(options["host"], options["port"])  # a taken port fails before the slow model load
    model, bpe = load_model_and_vocab(args.model, args.vocab, args.pretrained, args.adapter)
    model = prepare_for_batches(model, device, DTYPES[options["dtype"]], args.quantize, options["max_batch"])
    engine = Engine(model, bpe, options["max_batch"], options["max_queue"])
    name = model_name(args)
    app = create_app(engine, bpe, name, model.config.max_seq_len, args.api_key, options["allowed_hosts"])
    host = f"[{options['host']}]" if ":" in options["host"] else options["host"]
    print(f"Serving {name} on http://{host}:{options['port']}/ (playground; API under /v1, e.g. /v1/completions). "
          "Ctrl-C stops.", flush=True)
    run_server(engine, app, listener, HttpLimits(**options["limits"]))
    return 0


def exposure_warning(host: str, api_key: str | None) -> str | None:
    """What to warn about before listening on host: other machines may reach it and no key is asked.

    exposure_warning("0.0.0.0", None) -> "listening on 0.0.0.0 without --api-key: ..."; on 127.0.0.1 -> None
    """
    if host in LOOPBACK or api_key is not None:
        return None
    return (f"listening on {host} without --api-key: anyone who can reach this machine can use the model; "
            "pass --api-key KEY (or --host 127.0.0.1)")


def model_name(args) -> str:
    """The id clients send as "model": the adapter's, checkpoint's or directory's name, without suffix."""
    if args.adapter:
        return Path(args.adapter).stem
    if args.pretrained:
        return Path(args.pretrained).resolve().name
    return Path(args.model or "gpt2_model.pt").stem


def parse_options(args) -> dict:
    """Check every flag -> plain values, or raise UserError naming the flag (nothing imported yet)."""
    check_inference_weights(args.dtype, args.quantize)
    if args.api_key is not None and not args.api_key.strip():
        raise UserError("--api-key needs a non-empty key")
    return {
        "host": args.host,
        "port": parse_number(args.port, "--port", int, low=1, high=65535),
        "max_batch": parse_number(args.max_batch, "--max-batch", int, low=1, high=MAX_BATCH),
        "max_queue": parse_number(args.max_queue, "--max-queue", int, low=0, high=MAX_QUEUE),
        "dtype": args.dtype or "fp32",
        "limits": {
            "max_header_bytes": parse_number(args.max_header_bytes, "--max-header-bytes", int, low=1024),
            "header_timeout": parse_number(args.header_timeout, "--header-timeout", float, low=0, exclusive_low=True),
            "body_timeout": parse_number(args.body_timeout, "--body-timeout", float, low=0, exclusive_low=True),
            "max_connections": parse_number(args.max_connections, "--max-connections", int, low=1),
        },
        # On a loopback address only this machine's names (and those allowed) may name the server; elsewhere the
        # API key is the guard, and any Host is answered unless names are given.
        "allowed_hosts": (LOOPBACK + tuple(args.allowed_host) if args.host in LOOPBACK
                          else tuple(args.allowed_host) or None),
    }
