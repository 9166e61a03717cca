"""Training metrics: bits per byte, and the JSON-lines log that `plot` reads.

Bits per byte is loss made comparable across tokenizers: a model with a bigger vocab has a higher
loss per token but fewer tokens per byte. It is the total code length of the text in bits divided
by the text's length in bytes.
"""
import json
import math
from pathlib import Path

from gpt2_llm.errors import UserError


def bits_per_byte(total_nats: float, total_bytes: int) -> float:
    """Sum of per-token cross-entropies (nats) over the bytes those tokens spell, in bits.

    bits_per_byte(2 * math.log(2), 4) -> 0.5: two tokens at 1 bit each spelling 4 bytes.
    """
    if total_bytes <= 0:
        raise ValueError("bits per byte needs at least one byte of text")
    return total_nats / total_bytes / math.log(2)


class MetricsLog:
    """Append one JSON object per line, flushed at once, so `tail -f` and `plot` see a live run."""

    def __init__(self, path):
        self.path = path
        self.file = open(path, "a", encoding="utf-8") if path else None

    def write(self, record: dict) -> None:
        if self.file:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()

    def close(self) -> None:
        if self.file:
            self.file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_metrics(path) -> list[dict]:
    """Records of a metrics log in step order; a step logged twice (a resumed run) keeps its last record."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"metrics log {path} not found; write one with: python main.py train ... --log-file {path}")
    by_step = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise UserError(f"{path} line {lineno} is not JSON; is it a --log-file from train?") from None
            if not isinstance(record, dict) or "step" not in record:
                raise UserError(f"{path} line {lineno} has no 'step'; is it a --log-file from train?")
            by_step[record["step"]] = record
    return [by_step[step] for step in sorted(by_step)]
