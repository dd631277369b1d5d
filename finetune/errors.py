"""Errors caused by the user's input: reported as one line per problem, exit code 2, no traceback."""

from __future__ import annotations

EXIT_USER_ERROR = 2


class FinetuneError(Exception):
    """A problem with the user's recipe, data, model or run folder; carries one line per problem."""

    def __init__(self, *problems: str) -> None:
        self.problems = [p for p in problems if p]
        super().__init__("\n".join(self.problems))


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (library errors run long), or its type's name."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
