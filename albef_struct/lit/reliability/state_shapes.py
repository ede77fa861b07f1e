"""Refusing a checkpoint whose tensor shapes do not fit the model, naming the key and the settings that differ."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from albef_struct.checkpoint.errors import CheckpointError

__all__ = ["check_state_shapes"]


def _flat(values: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as ``{"a.b": value}``."""
    if not isinstance(values, Mapping):
        return {prefix: values} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in values.items():
        out.update(_flat(value, f"{prefix}{key}.") if isinstance(value, Mapping) else {f"{prefix}{key}": value})
    return out


def check_state_shapes(module: torch.nn.Module, checkpoint: Mapping[str, Any]) -> None:
    """Raise :class:`CheckpointError` naming the first key of ``checkpoint["state_dict"]`` whose shape differs.

    Keys owned by a submodule that adapts its own state when loading (one that
    overrides ``_load_from_state_dict``, e.g. the decomposable loss resizing its
    per-sample state) are left to it. The message also lists the hyper-parameters
    that differ between the checkpoint and ``module`` (its ``hparams``).
    """
    state = checkpoint.get("state_dict")
    if not isinstance(state, Mapping):
        return
    own = module.state_dict(keep_vars=True)
    mismatched = []
    for key, mine in own.items():
        theirs = state.get(key)
        if not isinstance(theirs, torch.Tensor) or theirs.shape == mine.shape:
            continue
        owner = module.get_submodule(key.rpartition(".")[0])
        if type(owner)._load_from_state_dict is not torch.nn.Module._load_from_state_dict:
            continue
        mismatched.append((key, tuple(theirs.shape), tuple(mine.shape)))
    if not mismatched:
        return
    key, theirs, mine = mismatched[0]
    saved, current = _flat(checkpoint.get("hyper_parameters") or {}), _flat(dict(getattr(module, "hparams", {}) or {}))
    names = [name for name in saved if name in current and saved[name] != current[name] and name != "init_from"]
    names.sort(key=lambda name: not name.startswith("arch."))  # the architecture first: it decides the shapes
    differ = [f"{name}: {saved[name]!r} in the checkpoint, {current[name]!r} here" for name in names]
    settings = f" Settings that differ: {'; '.join(differ[:6])}." if differ else ""
    more = f" ({len(mismatched) - 1} more key(s) differ)" if len(mismatched) > 1 else ""
    raise CheckpointError(
        f"{key} has shape {theirs} in the checkpoint but {mine} in the model (first mismatching key){more}: the "
        f"checkpoint was written by a model built with other settings.{settings} Build the model with the "
        "checkpoint's settings (model.init_args, e.g. from the config.yaml saved beside it), or start from its "
        "weights with model.init_args.init_from, which adapts what it can and reports the rest."
    )
