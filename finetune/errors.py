"""Errors caused by the user's input: reported as one line per problem, exit code 2, no traceback."""

from __future__ import annotations

import os

EXIT_USER_ERROR = 2
# said by `finetune validate` and by training alike
STREAM_LABELS = (
    "task.labels: a streamed training split is not read whole before training, so its {path} values cannot name "
    "the classes; list them (task.labels: [...])"
)


class FinetuneError(Exception):
    """A problem with the user's recipe, data, model or run folder; carries one line per problem."""

    def __init__(self, *problems: str) -> None:
        self.problems = [p for p in problems if p]
        super().__init__("\n".join(self.problems))


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (library errors run long), or its type's name."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


class Interrupted(FinetuneError):
    """A run stopped by a signal (SIGTERM from a scheduler, SIGINT from Ctrl-C) after saving a checkpoint; exits
    with the shell's code for the signal (128 + its number)."""

    def __init__(self, signal_name: str, signal_number: int, step: int, run_dir: str) -> None:
        super().__init__(f"{signal_name} at step {step}: checkpoint saved in {run_dir}; nothing is lost")
        self.exit_code, self.run_dir = 128 + signal_number, run_dir


class SaveFailed(FinetuneError):
    """Writing a checkpoint or the weights failed (a full disk, a lost mount); the checkpoint before it is whole.
    `run_dir` is set when that checkpoint exists, so that the run can continue from it."""

    def __init__(self, problem: str, run_dir: str | None) -> None:
        super().__init__(problem)
        self.run_dir = run_dir


TOKEN_VARIABLES = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")


def redact(text: str) -> str:
    """`text` with every Hugging Face token this process can use replaced by ***: what finetune prints on failure
    (an error line, a traceback) never shows one, whatever a server or a library put in its message."""
    tokens = {os.environ.get(name) for name in TOKEN_VARIABLES}
    try:
        from huggingface_hub import get_token

        tokens.add(get_token())
    except Exception:  # noqa: BLE001 - no login, an unreadable token file: nothing more to hide
        pass
    for token in tokens:
        if token and len(token) >= 8:
            text = text.replace(token, "***")
    return text
