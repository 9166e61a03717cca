"""`export [checkpoint] [vocab] --output PATH`: a model with its tokenizer, for Hugging Face, llama.cpp and Ollama.

    python main.py export gpt2_model.pt vocab.txt --output exported/               # a Hugging Face directory
    python main.py export gpt2_model.pt vocab.txt --output model.gguf --outtype q8_0   # GGUF + model.Modelfile
    python main.py export --adapter adapter.safetensors --output tuned/           # merged into its base
    python main.py export --pretrained gpt2/ --output gpt2.gguf

The format follows --output (a path ending in .gguf is GGUF, anything else a directory) unless --format says.
The work is in gpt2_llm/checkpoints/export.py; this file parses, checks and prints.
"""
from gpt2_llm.errors import UserError


def add_arguments(name, parser):
    parser.add_argument("model", nargs="?", default=None, help="checkpoint file (default: gpt2_model.pt)")
    parser.add_argument("vocab", nargs="?", default=None,
                        help="vocab file the model was trained with (default: vocab.txt)")
    parser.add_argument("--output", "-o", default=None, metavar="PATH",
                        help="a directory for Hugging Face, or a file ending in .gguf")
    parser.add_argument("--format", default=None,
                        help="hf: config.json, model.safetensors and the tokenizer's files, for transformers and "
                             "lm-eval; gguf: one file for llama.cpp, Ollama and LM Studio (default: gguf when "
                             "--output ends in .gguf, else hf)")
    parser.add_argument("--outtype", default="f32",
                        help="the weights' type: f32 (exact), f16, bf16, or q8_0 (GGUF only; a quarter of f32's "
                             "size) (default f32)")
    source = parser.add_argument_group("the model (as for predict)")
    source.add_argument("--pretrained", metavar="DIR", default=None,
                        help="a Hugging Face GPT-2 directory instead of a checkpoint and vocab")
    source.add_argument("--adapter", metavar="FILE", default=None,
                        help="a LoRA adapter, merged into its base (default base: the one it records)")


def run(args):
    from gpt2_llm.checkpoints.export import check_export, export, format_of

    if not args.output:
        raise UserError("export needs --output: a directory (Hugging Face) or a file ending in .gguf")
    fmt = args.format or format_of(args.output)
    check_export(args.output, fmt, args.outtype)  # before the slow load
    from gpt2_llm.load import load_model_and_vocab

    model, bpe = load_model_and_vocab(args.model, args.vocab, args.pretrained, args.adapter)
    try:
        written = export(model, bpe, args.output, fmt, args.outtype)
    except OSError as error:
        raise UserError(f"cannot write {args.output}: {error.strerror or error}") from None
    print(f"Exported {model.config.num_layers}x{model.config.embedding_dim} ({fmt}, {args.outtype}): "
          f"{', '.join(written)}")
    if fmt == "hf":
        print(f"Try: python main.py predict \"...\" 50 --pretrained {args.output}   or, in Python: "
              f"transformers.pipeline('text-generation', model={args.output!r})")
    else:
        print(f"Try: llama-completion -m {args.output} -p \"...\"   or: ollama create mymodel -f {written[1]} && "
              "ollama run mymodel \"...\"")
    return 0
