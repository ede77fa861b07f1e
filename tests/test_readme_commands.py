"""Every ``albef-struct fit/test/validate/predict`` command in the README parses as written.

Each command runs with ``--print_config`` appended: the configs, overlays and overrides it
names must exist and be accepted (files the run would read, such as data or checkpoints,
are not needed to parse).
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex

import pytest

from albef_struct.cli import main
from tests.conftest import REPO

TRAINER_COMMANDS = ("fit", "test", "validate", "predict")


def readme_commands() -> list[str]:
    """The README's CLI commands, one line each (continuations joined, comments and launchers dropped)."""
    text = (REPO / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            found = re.search(rf"albef-struct ({'|'.join(TRAINER_COMMANDS)})\b.*", line)
            if found:
                commands.append(re.sub(r"\s+", " ", found.group(0)))
    return commands


COMMANDS = readme_commands()


def test_the_readme_has_commands_for_every_flow():
    assert len(COMMANDS) >= 10 and {c.split()[1] for c in COMMANDS} >= {"fit", "test", "predict"}


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command_parses(command, monkeypatch):
    monkeypatch.chdir(REPO)  # the README's paths are relative to the repository
    args = [arg for arg in shlex.split(command)[1:] if not arg.startswith("$")]  # shell variables: extra options
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), pytest.raises(SystemExit) as exit_info:
        main(args + ["--print_config"])
    assert exit_info.value.code == 0, command
    assert "model:" in printed.getvalue() and "trainer:" in printed.getvalue()
