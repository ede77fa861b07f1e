"""Plain-text result tables and JSON result files."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], float_format: str = "{:.2f}") -> str:
    """A fixed-width table; floats are formatted with ``float_format``."""
    cells = [[float_format.format(v) if isinstance(v, float) else str(v) for v in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    line = "  ".join(str(h).ljust(w) for h, w in zip(headers, widths))
    rule = "  ".join("-" * w for w in widths)
    body = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
    return "\n".join([line, rule, *body])


def write_json(path: str | Path, payload: Any) -> Path:
    """Write ``payload`` as indented JSON, creating parent folders; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    return path


def report_results(
    log_dir: str | Path,
    name: str,
    metrics: dict[str, float],
    chance: dict[str, float] | None = None,
    extra: dict[str, Any] | None = None,
    blind: dict[str, float] | None = None,
) -> Path:
    """Print ``metrics`` (next to chance level and the blind baseline when known) and write
    ``<log_dir>/<name>.json`` (``metrics``, ``chance``, ``blind`` and ``extra``'s keys)."""
    chance, blind = chance or {}, blind or {}
    rows = [(key, value, chance.get(key, ""), blind.get(key, "")) for key, value in metrics.items()]
    print(f"\n{name}")
    print(format_table(("metric", "value", "chance", "blind (no image)"), rows))
    path = write_json(Path(log_dir) / f"{name}.json", {"metrics": metrics, "chance": chance, "blind": blind, **(extra or {})})
    print(f"written to {path}")
    return path
