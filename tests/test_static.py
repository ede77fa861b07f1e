"""Static checks over the project's code: a name that is never defined is a crash waiting on some code path
(an error message, a rarely taken branch) that no test happens to take."""

from __future__ import annotations

from pyflakes import api, messages, reporter

from tests.conftest import REPO

#: what fails the check: names used but never bound, and imports or definitions that shadow each other
FATAL = (messages.UndefinedName, messages.UndefinedExport, messages.UndefinedLocal, messages.RedefinedWhileUnused)


class Collect(reporter.Reporter):
    def __init__(self) -> None:
        self.found: list[str] = []

    def flake(self, message) -> None:
        if isinstance(message, FATAL):
            self.found.append(str(message))

    def syntaxError(self, filename, msg, lineno, offset, text) -> None:  # noqa: N802 - pyflakes' interface
        self.found.append(f"{filename}:{lineno}: {msg}")

    def unexpectedError(self, filename, msg) -> None:  # noqa: N802
        self.found.append(f"{filename}: {msg}")


def test_no_undefined_or_shadowed_names_in_the_code():
    collected = Collect()
    for folder in ("albef_struct", "benchmarks", "experiments", "tests"):
        for path in sorted((REPO / folder).rglob("*.py")):
            api.checkPath(str(path), collected)
    assert not collected.found, "\n".join(collected.found)
