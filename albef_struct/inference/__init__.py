"""Use a trained model from Python: load any checkpoint, then encode, compare, match, classify, answer.

    from albef_struct import inference
    model = inference.load("runs/demo/retrieval/checkpoints/best.ckpt")
    scores = model.similarity(["a.jpg", "b.jpg"], ["a red circle", "two blue squares"])

Importing this package and loading a checkpoint need no Lightning: the model's architecture
and heads come from the file (this project's ``.ckpt``/``.safetensors`` record them; official
ALBEF files are read from their tensor shapes).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from albef_struct.data.tokenizer import ALBEFTokenizer
from albef_struct.inference.errors import InferenceInputError
from albef_struct.inference.loading import ANSWER_LIST_KEY, LoadedCheckpoint, read_checkpoint
from albef_struct.inference.model import Explanation, InferenceModel, Prediction, RankedAnswer
from albef_struct.models import ALBEFConfig

__all__ = ["ANSWER_LIST_KEY", "Explanation", "InferenceModel", "LoadedCheckpoint", "Prediction", "RankedAnswer", "load"]


def load(
    path: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    *,
    arch: ALBEFConfig | Mapping[str, Any] | None = None,
    tokenizer: str | ALBEFTokenizer | None = None,
    answer_list: str | Path | Sequence[str] | None = None,
    batch_size: int = 64,
) -> InferenceModel:
    """The model in ``path`` ready for inference on ``device`` (weights cast to ``dtype``, e.g. ``torch.bfloat16``).

    ``arch`` overrides the architecture read from the file (official files: when the attention
    head counts are not ``width / 64``); ``tokenizer`` a vocabulary directory (default: the one
    the run trained with, else the offline bert-base-uncased vocabulary); ``answer_list`` the VQA
    candidates (a JSON list file or the answers), when the checkpoint stores none.
    """
    loaded = read_checkpoint(path, arch)
    if not isinstance(tokenizer, ALBEFTokenizer):
        tokenizer = ALBEFTokenizer(tokenizer if tokenizer is not None else loaded.tokenizer_path)
    if answer_list is not None:
        loaded.answer_list = _answers(answer_list)
    return InferenceModel(loaded, tokenizer, device, dtype, batch_size)


def _answers(answer_list: str | Path | Sequence[str]) -> list[str]:
    if isinstance(answer_list, (str, Path)):
        path = Path(answer_list)
        try:
            answers = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise InferenceInputError(f"{path}: cannot read the answer list ({err}); pass a JSON list of answers") from err
    else:
        answers = list(answer_list)
    if not answers or not all(isinstance(a, str) for a in answers):
        raise InferenceInputError(f"the answer list must be a non-empty list of strings, got {str(answers)[:80]}")
    return answers
