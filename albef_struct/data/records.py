"""Loading and validating ALBEF annotation JSON files (one schema per task)."""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .bad_records import BadRecordError, SkipReport
from .images import resolve_image_path

__all__ = [
    "Record",
    "SCHEMAS",
    "NLVR_LABELS",
    "VE_LABELS",
    "load_records",
    "load_answer_list",
]

log = logging.getLogger(__name__)

NLVR_LABELS = {"True": 1, "False": 0}
VE_LABELS = {"entailment": 2, "neutral": 1, "contradiction": 0}
VQA_SOURCES = ("vqa", "vg")


class Record(dict):
    """A validated record: the JSON fields plus where it came from and its resolved image paths."""

    source: str
    row: int
    image_paths: tuple[Path, ...]

    def __init__(self, data: dict, *, source: str, row: int, image_paths: tuple[Path, ...] = ()) -> None:
        super().__init__(data)
        self.source, self.row, self.image_paths = source, row, image_paths

    def __reduce__(self):
        return (_rebuild_record, (dict(self), self.source, self.row, self.image_paths))


def _rebuild_record(data: dict, source: str, row: int, image_paths: tuple[Path, ...]) -> Record:
    return Record(data, source=source, row=row, image_paths=image_paths)


# ---------------------------------------------------------------------------
# field checks


class _Checker:
    """Field checks for one record; every failure is a BadRecordError naming file/record/field."""

    def __init__(self, source: str, row: int, record: Any) -> None:
        self.source, self.row, self.record = source, row, record

    def fail(self, field: str | None, reason: str, found: Any, expected: str, hint: str | None = None,
             described: bool = False):
        """``found`` is the offending value (shown with its type) unless ``described``."""
        return BadRecordError(source=self.source, row=self.row, field=field, reason=reason,
                              found=found if described else _show(found), expected=expected, hint=hint)

    def get(self, key: str, expected: str) -> Any:
        if key not in self.record:
            keys = ", ".join(sorted(map(str, self.record))) or "none"
            raise self.fail(key, "missing field", f"no {key!r} key (keys: {keys})", expected, described=True)
        return self.record[key]

    def text(self, key: str, value: Any = None, label: str | None = None) -> str:
        value = self.get(key, "a non-empty string") if value is None else value
        label = label or key
        if not isinstance(value, str):
            raise self.fail(label, "wrong type", value, "a non-empty string")
        if not value.strip():
            raise self.fail(label, "empty text", value, "a non-empty string",
                            "Fill in the text or remove the record.")
        return value

    def text_or_list(self, key: str, allow_str: bool = True) -> str | list[str]:
        expected = "a non-empty string or a non-empty list of strings" if allow_str else "a non-empty list of strings"
        value = self.get(key, expected)
        if isinstance(value, str) and allow_str:
            return self.text(key, value)
        if not isinstance(value, list):
            raise self.fail(key, "wrong type", value, expected)
        if not value:
            raise self.fail(key, "empty text", value, expected)
        for i, item in enumerate(value):
            self.text(key, item, label=f"{key}[{i}]")
        return value

    def answers(self, key: str, required: bool = True) -> None:
        expected = "a string or a non-empty list of strings"
        if key not in self.record and not required:
            return
        value = self.get(key, expected)
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not items:
            raise self.fail(key, "wrong type", value, expected)
        for i, item in enumerate(items):
            if not isinstance(item, str):
                raise self.fail(f"{key}[{i}]" if isinstance(value, list) else key, "wrong type", item, "a string")

    def identifier(self, key: str) -> None:
        value = self.get(key, "a string or an integer")
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise self.fail(key, "wrong type", value, "a string or an integer")

    def box(self, key: str, value: Any = None, label: str | None = None) -> None:
        expected = "a box [x, y, width, height] of 4 numbers, width and height > 0"
        value = self.get(key, expected) if value is None else value
        numbers = isinstance(value, list) and len(value) == 4 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        if not numbers or value[2] <= 0 or value[3] <= 0:
            raise self.fail(label or key, "bad box", value, expected)

    def choice(self, key: str, allowed: tuple[str, ...], default: str | None = None) -> str:
        expected = " or ".join(repr(a) for a in allowed) + " (a string)"
        if default is not None and key not in self.record:
            return default
        value = self.get(key, expected)
        if value not in allowed or not isinstance(value, str):
            raise self.fail(key, "unknown label", value, expected)
        return value


def _show(value: Any, limit: int = 80) -> str:
    text = repr(value)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(value).__name__} {text}"


# ---------------------------------------------------------------------------
# schemas: each checks a record and returns its images as (field label, path, root key)

ImageRef = tuple[str, str, str]


def _pretrain(c: _Checker, rec: dict) -> list[ImageRef]:
    image = c.text("image")
    c.text_or_list("caption")
    return [("image", image, "image_root")]


def _retrieval_train(c: _Checker, rec: dict) -> list[ImageRef]:
    image = c.text("image")
    c.text("caption")
    c.identifier("image_id")
    return [("image", image, "image_root")]


def _retrieval_eval(c: _Checker, rec: dict) -> list[ImageRef]:
    image = c.text("image")
    c.text_or_list("caption", allow_str=False)
    return [("image", image, "image_root")]


def _vqa(c: _Checker, rec: dict, train: bool) -> list[ImageRef]:
    rec["dataset"] = c.choice("dataset", VQA_SOURCES, default="vqa")
    image = c.text("image")
    c.text("question")
    c.answers("answer", required=train)
    if not train:
        c.identifier("question_id")
    root = "vg_root" if rec["dataset"] == "vg" else "image_root"
    return [("image", image, root)]


def _nlvr(c: _Checker, rec: dict) -> list[ImageRef]:
    images = c.get("images", "a list of two image paths")
    if not isinstance(images, list) or len(images) != 2:
        raise c.fail("images", "wrong type", images, "a list of two image paths")
    refs = [(f"images[{i}]", c.text("images", p, label=f"images[{i}]"), "image_root") for i, p in enumerate(images)]
    c.text("sentence")
    c.choice("label", tuple(NLVR_LABELS))
    return refs


def _ve(c: _Checker, rec: dict) -> list[ImageRef]:
    image = c.text("image")
    c.text("sentence")
    c.choice("label", tuple(VE_LABELS))
    return [("image", image, "image_root")]


def _grounding(c: _Checker, rec: dict) -> list[ImageRef]:
    image = c.text("image")
    c.text("text")
    c.box("box")
    proposals = c.get("proposals", "a non-empty list of boxes [x, y, width, height]")
    if not isinstance(proposals, list) or not proposals:
        raise c.fail("proposals", "wrong type", proposals, "a non-empty list of boxes [x, y, width, height]")
    for i, box in enumerate(proposals):
        c.box("proposals", box, label=f"proposals[{i}]")
    return [("image", image, "image_root")]


SCHEMAS: dict[str, Callable[[_Checker, dict], list[ImageRef]]] = {
    "pretrain": _pretrain,
    "retrieval_train": _retrieval_train,
    "retrieval_eval": _retrieval_eval,
    "vqa_train": lambda c, rec: _vqa(c, rec, train=True),
    "vqa_test": lambda c, rec: _vqa(c, rec, train=False),
    "nlvr": _nlvr,
    "ve": _ve,
    "grounding": _grounding,
}


# ---------------------------------------------------------------------------
# loading


def _read_json_list(path: Path) -> list[Any]:
    src = str(path)
    if not path.is_file():
        what = "a directory" if path.is_dir() else "no such file"
        raise BadRecordError(source=src, row=None, field=None, reason="missing annotation file", found=what,
                             expected="an ALBEF annotation JSON file",
                             hint="Check the path in the config (relative paths are relative to the working directory).")
    try:
        with open(path, encoding="utf-8") as fh:
            if path.suffix == ".jsonl":
                return [json.loads(line) for line in fh if line.strip()]
            data = json.load(fh)
    except json.JSONDecodeError as err:
        raise BadRecordError(source=src, row=None, field=None, reason="invalid JSON",
                             found=f"{err.msg} at line {err.lineno}, column {err.colno}",
                             expected="valid JSON (a list of objects)") from None
    except UnicodeDecodeError as err:
        raise BadRecordError(source=src, row=None, field=None, reason="invalid JSON",
                             found=f"bytes that are not UTF-8 ({err.reason})", expected="a UTF-8 JSON file") from None
    if not isinstance(data, list):
        raise BadRecordError(source=src, row=None, field=None, reason="not a JSON list", found=_show(data),
                             expected="a JSON list of objects, one per record, as in ALBEF's annotation files")
    return data


def load_records(
    json_path: str | os.PathLike,
    schema: str,
    *,
    image_root: str | os.PathLike | None = None,
    vg_root: str | os.PathLike | None = None,
    image_ext: str = "",
    skip_bad_records: bool = False,
    check_images_exist: bool = True,
    report: SkipReport | None = None,
) -> list[Record]:
    """Validated records of one ALBEF annotation file (a JSON list, or ``.jsonl``).

    Args:
        json_path: the annotation file.
        schema: one of ``SCHEMAS`` (pretrain, retrieval_train, retrieval_eval, vqa_train,
            vqa_test, nlvr, ve, grounding).
        image_root: folder relative image paths are joined to (None: the JSON file's folder).
        vg_root: root for VQA records with ``dataset == 'vg'`` (None: ``image_root``).
        image_ext: appended to every image path (SNLI-VE stores ids without ``.jpg``).
        skip_bad_records: skip bad records and count them in ``report`` instead of raising.
        check_images_exist: check every image file exists now (cheap) rather than at load.
        report: where skipped records are counted; if None, skips are logged as a warning.

    Raises:
        BadRecordError: for an unusable file, or (unless skipping) the first bad record.
    """
    if schema not in SCHEMAS:
        raise ValueError(f"Unknown record schema {schema!r}; known: {', '.join(SCHEMAS)}.")

    path = Path(json_path)
    source = str(path)
    check = SCHEMAS[schema]
    roots = {"image_root": image_root, "vg_root": vg_root if vg_root is not None else image_root}
    local = SkipReport()
    records: list[Record] = []
    for row, raw in enumerate(_read_json_list(path)):
        try:
            if not isinstance(raw, dict):
                raise BadRecordError(source=source, row=row, field=None, reason="not an object", found=_show(raw),
                                     expected="a JSON object with the fields of the schema " + repr(schema))
            rec = dict(raw)
            paths = []
            for label, image, root_key in check(_Checker(source, row, raw), rec):
                resolved = resolve_image_path(image + image_ext, roots[root_key], source=source,
                                              record_index=row, field=label)
                if check_images_exist and not os.path.exists(resolved):
                    raise BadRecordError(
                        source=source, row=row, field=label, reason="missing image", found="no such file",
                        expected="an existing image file", path=str(resolved),
                        hint=f"Check {root_key} (now {roots[root_key]!r}) and the path in the JSON, "
                        "or set skip_bad_records=True to skip and count such records.",
                    )
                paths.append(resolved)
            records.append(Record(rec, source=source, row=row, image_paths=tuple(paths)))
        except BadRecordError as err:
            if not skip_bad_records:
                raise
            local.add(err)
    if report is not None:
        report.merge(local)
    elif local.total:
        log.warning("%s: %s", source, local.summary())
    return records


def load_answer_list(json_path: str | os.PathLike) -> list[str]:
    """The VQA candidate answers: a JSON list of non-empty strings."""
    path = Path(json_path)
    data = _read_json_list(path)
    for i, answer in enumerate(data):
        if not isinstance(answer, str) or not answer.strip():
            raise BadRecordError(source=str(path), row=i, field=None, reason="bad answer", found=_show(answer),
                                 expected="a non-empty string", hint="The answer list is a JSON list of strings.")
    if len(set(data)) != len(data):
        dupes = [a for a, n in Counter(data).items() if n > 1][:5]
        raise BadRecordError(source=str(path), row=None, field=None, reason="duplicate answers", found=repr(dupes),
                             expected="each candidate answer once")
    return data
