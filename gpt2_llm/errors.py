"""The one exception type for mistakes a user can make (a bad file, a bad id, a mismatched vocab).

The CLI turns it into a single line on stderr and exit code 2; library callers can catch it. This module
imports nothing, so every layer can use it (bpe.py and the model's config included).
"""


class UserError(Exception):
    """A mistake the user can fix (a bad file, a bad id, a mismatched vocab); the message says what and how.

    The one such exception type of the whole project. The CLI turns it into one line on stderr and exit code 2.
    """
