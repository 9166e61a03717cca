"""`plot <log>... [--x step|time] [--output loss.png]`: train and validation curves from `train --log-file` logs.

Several logs draw on the same axes, one colour each, to compare runs: `--x time` puts them side by side at equal
wall-clock (seconds of training), `--x step` (the default) at equal steps.

matplotlib is an optional dependency, imported only here.
"""
import os

from gpt2_llm.files import atomic_write
from gpt2_llm.errors import UserError


def add_arguments(name, parser):
    parser.add_argument("log", nargs="+", help="JSON-lines metrics file(s) written by train --log-file")
    parser.add_argument("--x", choices=("step", "time"), default="step",
                        help="horizontal axis: optimizer steps (default) or seconds of training")
    parser.add_argument("--output", "-o", default="loss.png", help="image to write (default: loss.png)")


def run(args):
    from gpt2_llm.train.metrics import read_metrics

    runs = []
    for log in args.log:
        try:
            records = read_metrics(log)
        except UnicodeDecodeError:
            raise UserError(f"{log} is not UTF-8 text; is it a --log-file from train?") from None
        if not records:
            raise UserError(f"{log} has no records yet")
        runs.append((os.path.basename(log), records))
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("plot needs matplotlib: pip install matplotlib") from None

    x_key = "step" if args.x == "step" else "elapsed"
    fig, (ax_loss, ax_bpb) = plt.subplots(1, 2, figsize=(11, 4))
    for colour, (name, records) in enumerate(runs):
        trained = [r for r in records if "loss" in r]  # an evaluation before training has no train loss
        xs, losses = [r.get(x_key, 0.0) for r in trained], [r["loss"] for r in trained]
        evals = [r for r in records if "val_loss" in r]
        label = "" if len(runs) == 1 else f"{name}: "
        if len(runs) == 1:
            ax_loss.plot(xs, losses, alpha=0.35, label="train loss (per step)")
        ax_loss.plot(xs, smooth(losses), color=f"C{colour}", label=f"{label}train loss (smoothed)")
        if evals:
            eval_xs = [r.get(x_key, 0.0) for r in evals]
            ax_loss.plot(eval_xs, [r["val_loss"] for r in evals], "o--", color=f"C{colour}", label=f"{label}val loss")
            ax_bpb.plot(eval_xs, [r["val_bpb"] for r in evals], "o-", color=f"C{colour}", label=name)
    xlabel = "step" if args.x == "step" else "seconds of training"
    ax_loss.set(xlabel=xlabel, ylabel="cross-entropy (nats/token)", title="loss")
    ax_loss.legend()
    ax_bpb.set(xlabel=xlabel, ylabel="bits per byte", title="validation bits per byte")
    if len(runs) > 1:
        ax_bpb.legend()
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
    counts = ", ".join(f"{name}: {len(records)} records" for name, records in runs)
    print(f"Wrote {args.output} ({counts})")
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
