"""What an initialisation from pretrained weights loaded, resized, tied and left fresh."""

from __future__ import annotations

from dataclasses import dataclass, field


def _group(name: str) -> str:
    """``fusion_encoder.layer.3.attention.self.query.weight`` -> ``fusion_encoder.layer``.

    Cross-attention gets its own group: it is the part a BERT checkpoint never has.
    """
    parts = [p for p in name.split(".") if not p.isdigit()]
    group = ".".join(parts[:2]) if len(parts) > 1 and parts[1] not in ("weight", "bias") else parts[0]
    return f"{group}.crossattention" if "crossattention" in parts else group


@dataclass
class InitReport:
    """Tensor names of a model part, by what initialisation did to them.

    ``loaded`` includes the ``resized`` ones (copied with a shape change: position
    tables); ``tied`` share storage with a loaded tensor (the MLM decoder and the
    word embeddings); ``fresh`` keep their random initialisation; ``dropped`` are
    checkpoint tensors the model has no place for.
    """

    source: str
    loaded: list[str] = field(default_factory=list)
    resized: list[str] = field(default_factory=list)
    tied: list[str] = field(default_factory=list)
    fresh: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        groups: dict[str, int] = {}
        for name in self.fresh:
            groups[_group(name)] = groups.get(_group(name), 0) + 1
        fresh = ", ".join(f"{g} ({n})" for g, n in sorted(groups.items())) or "none"
        resized = f", {len(self.resized)} resized" if self.resized else ""
        return f"initialised from {self.source}: {len(self.loaded)} tensors loaded{resized}; fresh: {fresh}"

    def table(self) -> str:
        """A short per-part table: loaded / resized / tied / fresh tensor counts."""
        columns = ("loaded", "resized", "tied", "fresh")
        rows: dict[str, dict[str, int]] = {}
        for column in columns:
            for name in getattr(self, column):
                row = rows.setdefault(_group(name), dict.fromkeys(columns, 0))
                row[column] += 1
        width = max([len("part"), *map(len, rows)])
        lines = [f"initialised from {self.source}", f"  {'part':<{width}}  " + "  ".join(f"{c:>7}" for c in columns)]
        for group in sorted(rows):
            lines.append(f"  {group:<{width}}  " + "  ".join(f"{rows[group][c]:>7}" for c in columns))
        if self.dropped:
            dropped: dict[str, int] = {}
            for name in self.dropped:
                dropped[_group(name)] = dropped.get(_group(name), 0) + 1
            unused = ", ".join(f"{g} ({n})" for g, n in sorted(dropped.items()))
            lines.append(f"  not used from the checkpoint: {unused}")
        lines.extend(f"  {note}" for note in self.notes)
        return "\n".join(lines)

