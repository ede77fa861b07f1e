"""The project's own errors: their messages say what went wrong, where, and the fix.

The ``albef-struct`` command prints such an error as its message alone and exits with
status 1; ``--debug`` (or ``ALBEF_STRUCT_DEBUG=1``) shows the traceback instead. Any
other exception keeps its traceback: it is a bug, not a message for the user.
"""

from __future__ import annotations

import os
import re

DEBUG_FLAG = "--debug"
DEBUG_ENV = "ALBEF_STRUCT_DEBUG"


class ProjectError(Exception):
    """Base of the errors meant for the person running the command (bad data, config, checkpoint, NaN)."""


def debug_requested(args: list[str]) -> tuple[bool, list[str]]:
    """``(debug?, args without --debug)``; the environment variable counts too."""
    debug = DEBUG_FLAG in args or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    return debug, [arg for arg in args if arg != DEBUG_FLAG]


_WORKER = re.compile(r"^Caught (\w+) in DataLoader worker process \d+")


def user_message(error: BaseException) -> str | None:
    """The message to show for ``error``, or None when it is not one of the project's errors.

    A project error raised in a DataLoader worker reaches the main process as a
    ``RuntimeError`` holding the worker's traceback as text; its last line is the message.
    """
    if isinstance(error, ProjectError):
        return f"{type(error).__name__}: {error}"
    match = _WORKER.match(str(error))
    if isinstance(error, RuntimeError) and match and match.group(1) in _project_error_names():
        name = match.group(1)
        tail = str(error).rsplit(f"{name}: ", 1)[-1].strip()
        return f"{name}: {tail}"
    return None


def _project_error_names() -> set[str]:
    names, todo = set(), [ProjectError]
    while todo:
        cls = todo.pop()
        names.add(cls.__name__)
        todo.extend(cls.__subclasses__())
    return names


def hint() -> str:
    return f"(for the traceback, run again with {DEBUG_FLAG} or {DEBUG_ENV}=1)"
