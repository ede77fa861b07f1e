"""One table for ``make demo``: each stage's test metric next to its chance level.

    python -m albef_struct.demo_summary --runs runs/demo --pretrain-run runs/demo/pretrain_small

Every stage's ``test`` writes ``<task>_test.json`` (``metrics`` and ``chance``) in its run
folder; the rows are the summary metrics each task declares in the task registry
(:mod:`albef_struct.tasks.registry`). This reads the newest file per stage, prints the
table, writes ``summary.json`` and exits non-zero when a stage's results are missing,
so a demo that silently skipped a stage cannot look complete.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from albef_struct.tasks.registry import TASKS


#: The task whose rows come from the pretraining run (``--pretrain-run``), not from ``RUNS/<task>``.
PRETRAIN_TASK = "pretrain"
PRETRAIN_RUN = "{pretrain}"


@dataclass(frozen=True)
class Row:
    """One line of the table: where the number comes from and what it measures."""

    stage: str
    run: str  # run folder under --runs (PRETRAIN_RUN: the pretraining run)
    results_file: str
    metric: str
    chance_key: str
    label: str


def task_rows() -> tuple[Row, ...]:
    """The table's rows: every registered task's summary metrics, in the registry's order."""
    return tuple(
        Row(spec.title, PRETRAIN_RUN if name == PRETRAIN_TASK else name, f"{spec.result_name}.json",
            metric.metric, metric.chance, metric.label)
        for name, spec in TASKS.items()
        for metric in spec.summary
    )


ROWS = task_rows()


@dataclass
class Result:
    stage: str
    label: str
    value: float | None
    chance: float | None
    source: str | None

    @property
    def above_chance(self) -> bool | None:
        if self.value is None or self.chance is None:
            return None
        return self.value > self.chance


def newest(run_dir: Path, filename: str) -> Path | None:
    """The most recently written ``filename`` under ``run_dir`` (runs keep one log folder per version)."""
    found = sorted(run_dir.rglob(filename), key=lambda p: p.stat().st_mtime) if run_dir.is_dir() else []
    return found[-1] if found else None


def read_results(path: Path) -> dict:
    """A stage's results JSON; a truncated or hand-edited file names itself and the fix."""
    try:
        payload = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); re-run that stage's `albef-struct test`") from error
    if not isinstance(payload, dict) or not isinstance(payload.get("metrics"), dict):
        raise ValueError(f"{path} has no 'metrics' object; re-run that stage's `albef-struct test`")
    return payload


def collect(runs: Path, pretrain_run: Path) -> list[Result]:
    results = []
    for row in ROWS:
        run_dir = pretrain_run if row.run == PRETRAIN_RUN else runs / row.run
        path = newest(run_dir, row.results_file)
        value = chance = None
        if path is not None:
            payload = read_results(path)
            value = payload.get("metrics", {}).get(row.metric)
            chance = payload.get("chance", {}).get(row.chance_key)
        results.append(Result(row.stage, row.label, value, chance, str(path) if path else None))
    return results


def format_table(results: list[Result]) -> str:
    def cell(x: float | None) -> str:
        return "missing" if x is None else f"{x:.1f}"

    header = f"{'stage':<22} {'metric':<58} {'value':>8} {'chance':>8}  above chance"
    lines = [header, "-" * len(header)]
    for r in results:
        verdict = {True: "yes", False: "NO", None: "-"}[r.above_chance]
        lines.append(f"{r.stage:<22} {r.label:<58} {cell(r.value):>8} {cell(r.chance):>8}  {verdict}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path("runs/demo"), help="folder holding the task runs")
    parser.add_argument("--pretrain-run", type=Path, default=Path("runs/demo/pretrain_small"))
    parser.add_argument("--out", type=Path, default=None, help="summary JSON (default: RUNS/summary.json)")
    args = parser.parse_args(argv)
    results = collect(args.runs, args.pretrain_run)
    print("\nDemo results (test splits; values and chance in %)\n" + format_table(results))
    out = args.out or args.runs / "summary.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps([asdict(r) | {"above_chance": r.above_chance} for r in results], indent=2) + "\n")
    print(f"written to {out}")
    missing = [f"{r.stage}: {r.label}" for r in results if r.value is None]
    if missing:
        print("missing results (did a stage fail?): " + "; ".join(missing), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
