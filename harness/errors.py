"""User-facing errors: bad config, data or arguments. The CLI turns them into exit code 2
with the message and no traceback."""
from __future__ import annotations


class UserError(Exception):
    """An input problem the user can fix. ``problems`` holds one line per problem, each naming
    the file (and line), the key or row, and the fix."""

    def __init__(self, message: str | None = None, problems: list[str] | None = None):
        self.problems = list(problems or ([] if message is None else [message]))
        super().__init__("\n".join(self.problems))


class DataError(UserError):
    """A data set row or file that cannot be used (names the file and the row)."""
