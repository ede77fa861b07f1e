"""Where the library's log records go when it runs as the ``albef-struct`` command.

The modules log through :mod:`logging` (``albef_struct.*`` loggers) and configure
nothing, as a library should. The command attaches one handler that prints their INFO
records and above to stderr on rank 0: the weight-import reports (what ``init_from``
loaded, what starts fresh and why, what was dropped), the pretrained-encoder reports and
the counts of skipped records. Without it, INFO records were lost.
"""

from __future__ import annotations

import logging
import sys

from pytorch_lightning.utilities.rank_zero import rank_zero_only

__all__ = ["configure_command_logging"]

_MARK = "_albef_struct_command_handler"


class _StderrHandler(logging.StreamHandler):
    """Writes to ``sys.stderr`` as it is when a record comes (it may be replaced after set-up)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _on_rank_zero(record: logging.LogRecord) -> bool:
    return getattr(rank_zero_only, "rank", 0) == 0


def configure_command_logging(level: int = logging.INFO) -> logging.Handler:
    """Print ``albef_struct``'s records at ``level`` and above to stderr on rank 0 (once per process)."""
    logger = logging.getLogger("albef_struct")
    for handler in logger.handlers:
        if getattr(handler, _MARK, False):
            return handler
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.addFilter(_on_rank_zero)
    setattr(handler, _MARK, True)
    logger.addHandler(handler)
    logger.setLevel(level)
    return handler
