"""The one exception type for mistakes a user can make (bad file, bad id, mismatched vocab).

It is defined in bpe.py, the lowest layer (the tokenizer must not import this package), and
re-exported here for the package. The CLI turns it into a single line on stderr and exit code 2;
library callers can catch it.
"""
from bpe import UserError

__all__ = ["UserError"]
