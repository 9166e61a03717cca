"""`plot <log> [--output loss.png]`: train and validation curves from a `train --log-file` log.

matplotlib is an optional dependency, imported only here.
"""
import os

from bpe import atomic_write
from gpt2_llm.errors import UserError


def add_arguments(name, parser):
    parser.add_argument("log", help="JSON-lines metrics file written by train --log-file")
    parser.add_argument("--output", "-o", default="loss.png", help="image to write (default: loss.png)")


def run(args):
    from gpt2_llm.metrics import read_metrics

    try:
        records = read_metrics(args.log)
    except UnicodeDecodeError:
        raise UserError(f"{args.log} is not UTF-8 text; is it a --log-file from train?") from None
    if not records:
        raise UserError(f"{args.log} has no records yet")
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("plot needs matplotlib: pip install matplotlib") from None

    steps = [r["step"] for r in records if "loss" in r]  # an evaluation before training has no train loss
    losses = [r["loss"] for r in records if "loss" in r]
    evals = [r for r in records if "val_loss" in r]
    fig, (ax_loss, ax_bpb) = plt.subplots(1, 2, figsize=(11, 4))
    ax_loss.plot(steps, losses, alpha=0.35, label="train loss (per step)")
    ax_loss.plot(steps, smooth(losses), label="train loss (smoothed)")
    if evals:
        ax_loss.plot([r["step"] for r in evals], [r["val_loss"] for r in evals], "o-", label="val loss")
        ax_bpb.plot([r["step"] for r in evals], [r["val_bpb"] for r in evals], "o-", color="C2")
    ax_loss.set(xlabel="step", ylabel="cross-entropy (nats/token)", title="loss")
    ax_loss.legend()
    ax_bpb.set(xlabel="step", ylabel="bits per byte", title="validation bits per byte")
    for ax in (ax_loss, ax_bpb):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    image_format = os.path.splitext(args.output)[1][1:].lower() or "png"  # the temp file's name has no extension
    try:
        atomic_write(args.output, lambda temp_path: fig.savefig(temp_path, dpi=120, format=image_format))
    except OSError as e:
        raise UserError(f"cannot write {args.output}: {e.strerror or e}") from None
    except ValueError as e:  # a format matplotlib does not know, e.g. loss.xyz
        raise UserError(f"cannot write {args.output}: {e}") from None
    plt.close(fig)
    print(f"Wrote {args.output} ({len(records)} steps, {len(evals)} evaluations)")
    return 0


def smooth(values, weight=0.9):
    """Exponential moving average, debiased like Adam's so the start is not pulled toward 0.

    smooth([1.0, 1.0]) -> [1.0, 1.0]
    """
    out, average = [], 0.0
    for i, value in enumerate(values, start=1):
        average = weight * average + (1 - weight) * value
        out.append(average / (1 - weight**i))
    return out
