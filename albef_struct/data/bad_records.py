"""Bad records: the error that names an unusable file, record or image, and the count of skipped ones."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from albef_struct.errors import ProjectError

__all__ = ["BadRecordError", "SkipReport"]


class BadRecordError(ProjectError, ValueError):
    """A JSON file, record or image that cannot be used; the message says where and how to fix it.

    Attributes ``source`` (JSON file), ``row`` (record index, or None for the whole file),
    ``field``, ``reason`` (a short category used for skip counts), ``found``, ``expected``,
    ``path`` (the image path, if any).
    """

    def __init__(
        self,
        *,
        source: str,
        row: int | None,
        field: str | None,
        reason: str,
        found: str,
        expected: str,
        hint: str | None = None,
        path: str | None = None,
    ) -> None:
        self.source, self.row, self.field = str(source), row, field
        self.reason, self.found, self.expected = reason, found, expected
        self.hint, self.path = hint, path
        where = self.source if row is None else f"{self.source}, record {row}"
        if field is not None:
            where += f", field {field!r}"
        if path is not None:
            where += f", image {path}"
        msg = f"{where}: {reason}: found {found}; expected {expected}."
        if hint:
            msg += f" {hint}"
        super().__init__(msg)

    def __reduce__(self):  # keep keyword-only construction working across worker processes
        return (_rebuild_error, (self.__dict__.copy(),))


def _rebuild_error(state: dict) -> BadRecordError:
    keys = ("source", "row", "field", "reason", "found", "expected", "hint", "path")
    return BadRecordError(**{k: state[k] for k in keys})


@dataclass
class SkipReport:
    """What was skipped and why: a count per reason and the first few messages."""

    counts: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    max_examples: int = 5

    def add(self, err: BadRecordError) -> None:
        self.counts[err.reason] += 1
        if len(self.examples) < self.max_examples:
            self.examples.append(str(err))

    def merge(self, other: SkipReport) -> SkipReport:
        """Add ``other``'s counts and examples to this report (returns self)."""
        self.counts.update(other.counts)
        room = self.max_examples - len(self.examples)
        self.examples.extend(other.examples[: max(room, 0)])
        return self

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        if not self.total:
            return "no records skipped"
        reasons = ", ".join(f"{n} {reason}" for reason, n in self.counts.most_common())
        lines = [f"skipped {self.total} bad record(s): {reasons}"]
        lines += [f"  e.g. {e}" for e in self.examples]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()
