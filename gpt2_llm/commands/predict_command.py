"""`predict <prompt> <num_tokens> [model] [vocab]`: continue a prompt, printing text as it is generated.

    python main.py predict "ROMEO:" 200                         # gpt2_model.pt + vocab.txt
    python main.py predict "Hello" 50 --pretrained gpt2/ --temperature 0 --quantize int8
    python main.py predict "ROMEO:" 200 --adapter adapter.safetensors   # gpt2_model.pt + a LoRA adapter
    python main.py predict "" 200 chat.pt chat.vocab.txt --chat          # a conversation at the terminal

The prompt is echoed, then each token's text is printed as soon as it is complete (see
text_stream.py). Generation ends after num_tokens, at <|endoftext|>, or at a --stop string (which
is not printed). --beam N searches instead of sampling and prints the best beam at the end.
Flag values are checked here, so that a bad one is a one-line error (exit 2), not a traceback.
"""
import sys
import time

from gpt2_llm.commands.common import check_inference_weights, parse_number
from gpt2_llm.errors import UserError

MAX_NEW_TOKENS = 100_000  # beyond this a typo is likelier than a wish (and it would run for hours)
MAX_BEAMS = 64
MAX_SAMPLES = 1000


def add_arguments(name, parser):
    parser.add_argument("prompt", help='text to continue ("" starts from <|endoftext|>)')
    parser.add_argument("num_tokens", help="number of tokens to generate")
    parser.add_argument("model", nargs="?", default=None, help="checkpoint file (default: gpt2_model.pt)")
    parser.add_argument("vocab", nargs="?", default=None,
                        help="vocab file the model was trained with (default: vocab.txt)")
    sampling = parser.add_argument_group("sampling")
    sampling.add_argument("--temperature", default="0.8", help="softmax temperature; 0 = greedy (default 0.8)")
    sampling.add_argument("--top-k", default="40",
                          help="sample from the k most likely tokens; 0 or none = all (default 40)")
    sampling.add_argument("--top-p", default=None, help="nucleus sampling: the smallest set of tokens with this much "
                                                        "probability, in (0, 1] (default: off)")
    sampling.add_argument("--repetition-penalty", default="1.0",
                          help="CTRL-style penalty > 0 on already seen tokens, e.g. 1.2; 1 = off (default 1.0)")
    sampling.add_argument("--beam", default=None, metavar="N",
                          help="beam search with N beams instead of sampling (deterministic; prints the best "
                               "beam at the end; sampling flags do not apply)")
    sampling.add_argument("--num-samples", default="1", help="how many continuations to print (default 1)")
    sampling.add_argument("--seed", default=None, help="random seed: the same seed gives the same text (on CPU)")
    sampling.add_argument("--stop", action="append", default=[], metavar="STRING",
                          help="end when the generated text contains STRING, which is not printed (repeatable)")
    chat = parser.add_argument_group("chat")
    chat.add_argument("--chat", action="store_true",
                      help="a conversation: the prompt (if not \"\") is the first message, then each line read is "
                           "the next; num_tokens bounds each reply. /reset forgets the conversation, Ctrl-D leaves. "
                           "A chat-tuned model (finetune --chat) gets its template, any other a plain one")
    chat.add_argument("--system", default=None, metavar="TEXT", help="with --chat: a system message opening it")
    where = parser.add_argument_group("model, device and precision")
    where.add_argument("--pretrained", metavar="DIR", default=None,
                       help="a Hugging Face GPT-2 directory (config.json, model.safetensors or pytorch_model.bin, "
                            "vocab.json, merges.txt) instead of a checkpoint and vocab")
    where.add_argument("--adapter", metavar="FILE", default=None,
                       help="a LoRA adapter file (what `finetune` writes) to apply to the model (default model: the "
                            "base the adapter was trained on); it is merged into the weights, so generation runs "
                            "at the base model's speed")
    where.add_argument("--dtype", default=None, help="fp32 or bf16 weights (default: fp32, the numbers transformers computes; bf16 reads half the bytes)")
    where.add_argument("--quantize", default=None, metavar="int8",
                       help="int8: weight-only int8 Linear layers, ~4x fewer bytes per token than fp32 (CPU)")
    where.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: cuda, then mps, then cpu)")
    where.add_argument("--timing", action="store_true",
                       help="print the generation speed to stderr at the end (tokens/s, prompt processing included; "
                            "and the time spent preparing the weights for decoding)")


def run(args):
    options = parse_options(args)  # every flag checked before the (slow) model load
    import torch

    from gpt2_llm.device import DTYPES, pick_device
    from gpt2_llm.infer.prepare import int8_kernel
    from gpt2_llm.load import load_model_and_vocab

    device = pick_device(args.device)
    model, bpe = load_model_and_vocab(args.model, args.vocab, args.pretrained, args.adapter)
    if options["quantize"] and int8_kernel(device).name is None and device.type == "cpu":
        print(f"note: {int8_kernel(device).reason}", file=sys.stderr)  # it falls back to fp32 weights
    start = time.perf_counter()
    model = model.for_inference(DTYPES[options["dtype"]], options["quantize"], device)
    options["prepare_seconds"] = time.perf_counter() - start
    generator = torch.Generator()  # a CPU generator, whatever the device: a seed means the same draws everywhere
    if options["settings"].seed is None:
        generator.seed()
    else:
        generator.manual_seed(options["settings"].seed)
    if args.chat:
        return chat(model, bpe, args, options, generator)
    prompt_ids = encode_prompt(args.prompt, bpe, model.config.max_seq_len)
    prompt = torch.tensor([prompt_ids], dtype=torch.long, device=device)
    beams = beam_texts(model, prompt, bpe, options) if options["beam"] else None
    for index in range(options["num_samples"]):
        if index:
            print("\n" + "-" * 40, flush=True)  # between samples
        print(args.prompt, end="", flush=True)
        if beams is not None:
            print(beams[index], end="")
        else:
            stream_sample(model, prompt, bpe, options, generator)
        print(flush=True)
    return 0


def chat(model, bpe, args, options, generator) -> int:
    """A conversation on stdin and stdout: each line read is a message, each reply printed as it is generated."""
    from gpt2_llm.chat.session import ChatSession
    from gpt2_llm.chat.template import PLAIN_TEMPLATE

    session = ChatSession(model, bpe, options["settings"], args.system, generator)
    interactive = sys.stdin.isatty()
    if session.template == PLAIN_TEMPLATE:
        print("note: this model's vocab has no chat tokens (finetune --chat adds them): using the plain template, "
              "'User: ...' and 'Assistant: ...'", file=sys.stderr)
    if interactive:
        print("Type a message and Enter; /reset forgets the conversation; Ctrl-D leaves.", file=sys.stderr)
    first = args.prompt or None
    while True:
        if first is not None:
            text, first = first, None
        else:
            try:
                text = input("> " if interactive else "")
            except EOFError:
                if interactive:
                    print(file=sys.stderr)
                return 0
        if text.strip() == "/reset":
            session.reset()
            print("(the conversation is forgotten)", file=sys.stderr, flush=True)
            continue
        if not text.strip():
            continue
        for piece in session.reply(text):
            print(piece, end="", flush=True)
        print(flush=True)


def stream_sample(model, prompt, bpe, options, generator) -> None:
    """Print one sampled continuation piece by piece, as its tokens are chosen."""
    from gpt2_llm.infer.generation import generate_tokens
    from gpt2_llm.infer.text_stream import TextStream

    stream = TextStream(bpe.token_bytes(), options["settings"].stop)
    start, count = time.perf_counter(), 0
    tokens = generate_tokens(model, prompt, options["settings"], generator, eos_token_id=bpe.eot_id,
                             vocab_size=bpe.vocab_size)
    for next_ids in tokens:
        token_id = int(next_ids[0])
        count += 1
        if token_id == bpe.eot_id:
            break
        print(stream.push(token_id), end="", flush=True)
        if stream.stopped:
            break
    tokens.close()  # puts the model back in its previous mode now, not when garbage-collected
    print(stream.finish(), end="", flush=True)
    if options["timing"]:
        seconds = time.perf_counter() - start
        print(f"\n[{count} tokens in {seconds:.3f} s: {count / seconds:.2f} tokens/s; weights prepared in "
              f"{options['prepare_seconds']:.3f} s]", file=sys.stderr, flush=True)


def beam_texts(model, prompt, bpe, options) -> list[str]:
    """The num_samples best beams' texts, best first, each cut at <|endoftext|> or a stop string."""
    from gpt2_llm.infer.beam_search import beam_search
    from gpt2_llm.infer.text_stream import TextStream

    beams = beam_search(model, prompt, options["settings"], options["beam"], eos_token_id=bpe.eot_id,
                        vocab_size=bpe.vocab_size)
    texts = []
    for beam in beams[: options["num_samples"]]:
        stream = TextStream(bpe.token_bytes(), options["settings"].stop)
        tokens = beam.tokens[:-1] if beam.tokens and beam.tokens[-1] == bpe.eot_id else beam.tokens
        texts.append("".join(stream.push(t) for t in tokens) + stream.finish())
    return texts


def encode_prompt(prompt: str, bpe, context: int) -> list[int]:
    """Prompt text -> ids; "" becomes <|endoftext|> (start of a document), too long keeps its end."""
    ids = bpe.encode(prompt, allowed_special="all") if prompt else [bpe.eot_id]
    if len(ids) > context:
        print(f"note: the prompt has {len(ids)} tokens, more than the model's context of {context}; "
              f"using its last {context}", file=sys.stderr)
        ids = ids[-context:]
    return ids


# --- flag values ----------------------------------------------------------------------------------


def parse_options(args) -> dict:
    """Check and convert every flag -> plain values, or raise UserError naming the flag (no torch
    import yet: a mistyped flag is reported at once)."""
    num_tokens = parse_number(args.num_tokens, "num_tokens", int, low=1, high=MAX_NEW_TOKENS)
    top_k = None if str(args.top_k).lower() in ("0", "none") else parse_number(args.top_k, "--top-k", int, low=1)
    beam = None if args.beam is None else parse_number(args.beam, "--beam", int, low=1, high=MAX_BEAMS)
    num_samples = parse_number(args.num_samples, "--num-samples", int, low=1, high=MAX_SAMPLES)
    if beam is not None and num_samples > beam:
        raise UserError(f"--num-samples {num_samples} is more than --beam {beam}: beam search ends with {beam} "
                        "sequences; raise --beam or lower --num-samples")
    top_p = None if args.top_p is None else parse_number(args.top_p, "--top-p", float, low=0.0, high=1.0)
    if top_p == 0.0:
        raise UserError("--top-p must be in (0, 1], got 0")
    check_inference_weights(args.dtype, args.quantize)
    if args.chat and (beam is not None or num_samples > 1):
        raise UserError("--chat replies one at a time: drop --beam and --num-samples")
    if args.system is not None and not args.chat:
        raise UserError("--system goes with --chat")
    dtype_name = args.dtype or "fp32"
    if any(stop == "" for stop in args.stop):
        raise UserError("--stop needs a non-empty string")
    from gpt2_llm.infer.sampling import SamplingSettings

    settings = SamplingSettings(
        max_tokens=num_tokens,
        temperature=parse_number(args.temperature, "--temperature", float, low=0.0),
        top_k=top_k,
        top_p=top_p,
        repetition_penalty=parse_number(args.repetition_penalty, "--repetition-penalty", float, low=0.0,
                                        exclusive_low=True),
        seed=None if args.seed is None else parse_number(args.seed, "--seed", int, low=0, high=2**63 - 1),
        stop=args.stop,
    )
    return {
        "settings": settings,
        "beam": beam,
        "num_samples": num_samples,
        "dtype": dtype_name,
        "quantize": args.quantize,
        "timing": args.timing,
    }
