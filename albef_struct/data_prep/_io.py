"""Reading raw annotation files and writing ALBEF JSON: helpers shared by the converters."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

PathLike = str | os.PathLike


class ConversionError(ValueError):
    """A raw annotation file that cannot be converted; the message says where and what to do."""


def where_error(
    path: PathLike, where: str | None, key: str | None, problem: str, fix: str | None = None
) -> ConversionError:
    """A :class:`ConversionError` reading ``<file>, <where>, field '<key>': <problem>. <fix>``."""
    msg = str(path)
    if where:
        msg += f", {where}"
    if key:
        msg += f", field {key!r}"
    msg += f": {problem}"
    if fix:
        msg += f". {fix}"
    return ConversionError(msg)


def _show(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= limit else text[: limit - 3] + '...'}"


def _check_file(path: Path, what: str) -> None:
    if not path.is_file():
        found = "a directory" if path.is_dir() else "no such file"
        raise where_error(path, None, None, f"{found}; expected {what}", "Check the path passed on the command line")


def load_json(path: PathLike, what: str) -> Any:
    """The parsed content of a JSON file; errors name the file (and line) and say what was expected."""
    path = Path(path)
    _check_file(path, what)
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except json.JSONDecodeError as err:
        raise where_error(path, f"line {err.lineno}, column {err.colno}", None,
                          f"invalid JSON ({err.msg}); expected {what}") from None
    except UnicodeDecodeError as err:
        raise where_error(path, None, None, f"not UTF-8 text ({err.reason}); expected {what}") from None


def iter_jsonl(path: PathLike, what: str) -> Iterator[tuple[int, dict]]:
    """``(line number, record)`` for each non-blank line of a JSON-lines file (one object per line)."""
    path = Path(path)
    _check_file(path, what)
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                problem = f"invalid JSON ({err.msg} at column {err.colno}); expected {what}, one object per line"
                raise where_error(path, f"line {lineno}", None, problem) from None
            if not isinstance(record, dict):
                raise where_error(path, f"line {lineno}", None, f"found {_show(record)}; expected a JSON object")
            yield lineno, record


def field(path: PathLike, where: str, record: dict, key: str, kind: type | tuple[type, ...], expected: str) -> Any:
    """``record[key]``, checked to be of ``kind`` (booleans are not ints; strings must be non-empty)."""
    if key not in record:
        keys = ", ".join(sorted(map(str, record))) or "none"
        raise where_error(path, where, key, f"missing (keys present: {keys}); expected {expected}")
    value = record[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise where_error(path, where, key, f"found {_show(value)}; expected {expected}")
    if isinstance(value, str) and not value.strip():
        raise where_error(path, where, key, f"empty string; expected {expected}")
    return value


def top_level_list(path: PathLike, data: Any, key: str, what: str) -> list:
    """``data[key]`` of a JSON object whose ``key`` holds the list of records."""
    if not isinstance(data, dict) or not isinstance(data.get(key), list):
        found = f"an object with keys {sorted(data)[:8]}" if isinstance(data, dict) else _show(data)
        raise where_error(path, None, None, f"found {found}; expected {what}: an object with a {key!r} list")
    return data[key]


def write_json_list(path: PathLike, records: Sequence[Any]) -> Path:
    """Write ``records`` as an indented JSON list (UTF-8), creating parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(list(records), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def print_counts(title: str, counts: dict[str, int], file=None) -> None:
    """Print ``counts`` one per line under ``title`` (skip counts included); ``file`` defaults to stdout."""
    file = file or sys.stdout
    print(title, file=file)
    width = max((len(k) for k in counts), default=0)
    for key, value in counts.items():
        print(f"  {key.ljust(width)}  {value}", file=file)
