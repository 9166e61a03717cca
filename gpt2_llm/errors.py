"""The one exception type for mistakes a user can make (bad file, bad id, mismatched vocab).

The CLI turns it into a single line on stderr and exit code 2; library callers can catch it.
"""


class UserError(Exception):
    """Something the user can fix; the message says what and how."""
