"""EDA-style text augmentation for the second augmented view (random word deletion and swaps)."""

from __future__ import annotations

import numpy as np


class WordDropSwap:
    """Delete each word with probability ``p_delete`` (keeping at least one) and swap ``n_swaps``
    random word pairs — the two label-free operations of EDA (Wei & Zou, 2019) that need no
    thesaurus. Deterministic given the ``numpy`` generator passed to :meth:`__call__`.
    """

    def __init__(self, p_delete: float = 0.1, n_swaps: int = 1) -> None:
        if not 0.0 <= p_delete < 1.0:
            raise ValueError(f"p_delete must be in [0, 1), got {p_delete}")
        if n_swaps < 0:
            raise ValueError(f"n_swaps must be >= 0, got {n_swaps}")
        self.p_delete = p_delete
        self.n_swaps = n_swaps

    def __call__(self, text: str, rng: np.random.Generator) -> str:
        words = text.split()
        if len(words) <= 1:
            return text
        keep = rng.random(len(words)) >= self.p_delete
        if not keep.any():
            keep[rng.integers(len(words))] = True
        words = [w for w, k in zip(words, keep) if k]
        for _ in range(self.n_swaps if len(words) > 1 else 0):
            i, j = rng.choice(len(words), size=2, replace=False)
            words[i], words[j] = words[j], words[i]
        return " ".join(words)
