"""One table for ``make demo``: each stage's test metric next to its blind baseline and chance level.

    python -m albef_struct.demo_summary --runs runs/demo --pretrain-run runs/demo/pretrain_small

Every stage's ``test`` writes ``<task>_test.json`` (``metrics``, ``chance`` and ``blind``: the
best score without the image, see :mod:`albef_struct.metrics.blind`) in its run folder; the
rows are the summary metrics each task declares in the task registry
(:mod:`albef_struct.tasks.registry`). Retrieval has no image-free baseline beyond chance
(without the image nothing ranks the images), so its blind value is its chance level.
This reads the newest file per stage, prints the table, writes ``summary.json`` and
``summary.png`` (a bar per row: score, blind, chance) and exits non-zero when a stage's
results are missing, so a demo that silently skipped a stage cannot look complete.
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
#: Metrics that rank images or texts: without the image their best is chance.
RANKING_METRICS = ("itc_", "txt_r", "img_r", "r_mean")


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
    blind: float | None = None

    @property
    def above_chance(self) -> bool | None:
        if self.value is None or self.chance is None:
            return None
        return self.value > self.chance

    @property
    def above_blind(self) -> bool | None:
        """Above the blind baseline by more than rounding (0.05 points: the table shows one decimal)."""
        if self.value is None or self.blind is None:
            return None
        return self.value > self.blind + 0.05


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
        value = chance = blind = None
        if path is not None:
            payload = read_results(path)
            value = payload.get("metrics", {}).get(row.metric)
            chance = payload.get("chance", {}).get(row.chance_key)
            blind = (payload.get("blind") or {}).get(row.metric, chance if row.run == PRETRAIN_RUN or
                                                     row.metric.startswith(RANKING_METRICS) else None)
        results.append(Result(row.stage, row.label, value, chance, str(path) if path else None, blind))
    return results


def format_table(results: list[Result]) -> str:
    def cell(x: float | None) -> str:
        return "missing" if x is None else f"{x:.1f}"

    header = f"{'stage':<22} {'metric':<58} {'value':>8} {'blind':>8} {'chance':>8}  beats blind"
    lines = [header, "-" * len(header)]
    for r in results:
        verdict = {True: f"yes (+{r.value - r.blind:.1f})" if r.above_blind else "", False: "NO", None: "-"}[r.above_blind]
        lines.append(f"{r.stage:<22} {r.label:<58} {cell(r.value):>8} {cell(r.blind):>8} {cell(r.chance):>8}  {verdict}")
    return "\n".join(lines)


def plot_results(results: list[Result], path: Path) -> Path:
    """A horizontal bar chart: per row the score, the blind baseline and chance (percent)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in results if r.value is not None]
    labels = [f"{r.stage}: {r.label}" for r in rows]
    height = 0.27
    fig, ax = plt.subplots(figsize=(10, 0.55 * len(rows) + 1.2))
    for offset, name, values, colour in ((-height, "model", [r.value for r in rows], "tab:blue"),
                                         (0.0, "blind (no image)", [r.blind or 0.0 for r in rows], "tab:orange"),
                                         (height, "chance", [r.chance or 0.0 for r in rows], "tab:gray")):
        ax.barh([i + offset for i in range(len(rows))], values, height=height, label=name, color=colour)
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("percent (test split)")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("make demo: each task's score vs its blind baseline and chance")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


#: ``albef-struct classify`` results of the pretrained model, one file per attribute (``RUNS/classify/<attr>.json``)
CLASSIFY_DIR = "classify"
FEW_SHOT_ROW = "5"


def classification_results(runs: Path) -> list[Result]:
    """Zero-shot top-1 and the 5-shot probe of each classification file under ``RUNS/classify`` (blind = chance:
    without the image no prompt or probe can tell the classes apart)."""
    results = []
    for path in sorted((runs / CLASSIFY_DIR).glob("*.json")):
        try:
            payload = json.loads(path.read_text())
            chance, top1 = payload["chance_top1"], payload["zero_shot"]["top1"]
        except (json.JSONDecodeError, KeyError) as error:
            raise ValueError(f"{path} is not an `albef-struct classify --out` file ({error}); re-run that stage") from error
        attribute = path.stem
        results.append(Result("zero-shot classification", f"{attribute}: zero-shot top-1 (prompts, pretrained model)",
                              top1, chance, str(path), chance))
        few = (payload.get("few_shot") or {}).get(FEW_SHOT_ROW)
        if few is not None:
            results.append(Result("few-shot classification", f"{attribute}: {FEW_SHOT_ROW}-shot linear probe, "
                                  f"mean of {len(few['runs'])} seeds", few["mean"], chance, str(path), chance))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path("runs/demo"), help="folder holding the task runs")
    parser.add_argument("--pretrain-run", type=Path, default=Path("runs/demo/pretrain_small"))
    parser.add_argument("--out", type=Path, default=None, help="summary JSON (default: RUNS/summary.json)")
    args = parser.parse_args(argv)
    results = collect(args.runs, args.pretrain_run) + classification_results(args.runs)
    print("\nDemo results (test splits, %; blind: the best score without the image)\n" + format_table(results))
    out = args.out or args.runs / "summary.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps([asdict(r) | {"above_chance": r.above_chance, "above_blind": r.above_blind}
                               for r in results], indent=2) + "\n")
    print(f"written to {out} and {plot_results(results, out.with_suffix('.png'))}")
    missing = [f"{r.stage}: {r.label}" for r in results if r.value is None]
    if missing:
        print("missing results (did a stage fail?): " + "; ".join(missing), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
