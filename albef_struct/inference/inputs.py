"""Turning what a user passes (PIL images, paths, tensors; strings or token dicts) into model inputs."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Union

import torch
from PIL import Image

from albef_struct.inference.errors import MissingInputError, UnreadableImageError
from albef_struct.data.text import pre_caption, pre_question
from albef_struct.data.tokenizer import ALBEFTokenizer

#: one image: a PIL image, a file path, or an already transformed tensor ``[3, H, W]``
ImageLike = Union[Image.Image, str, Path, torch.Tensor]
#: images: one, a sequence, or a transformed batch ``[B, 3, H, W]``
Images = Union[ImageLike, Sequence[ImageLike]]
#: texts: one string, a sequence, or tokens ``{"input_ids", "attention_mask"}`` (used as they are)
Texts = Union[str, Sequence[str], Mapping[str, torch.Tensor]]

#: how each kind of text is cleaned before tokenizing, as the task's dataset does (ALBEF's word limits)
CLEANERS: dict[str, Callable[[str], str]] = {
    "caption": lambda text: pre_caption(text, 30),
    "question": lambda text: pre_question(text, 50),
}


def open_image(item: str | Path | Image.Image) -> Image.Image:
    """An RGB PIL image; a path that cannot be read is named in the error."""
    if isinstance(item, Image.Image):
        return item.convert("RGB")
    path = Path(item)
    if not path.is_file():
        raise MissingInputError(f"{path}: no such image file")
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except OSError as err:
        raise UnreadableImageError(f"{path}: not a readable image ({err}); pass a JPEG/PNG file or a PIL image") from err


def image_list(images: Images) -> list[ImageLike] | torch.Tensor:
    """A batch tensor as it is, anything else as a list of single images."""
    if isinstance(images, torch.Tensor):
        return images if images.dim() == 4 else images.unsqueeze(0)
    if isinstance(images, (str, Path, Image.Image)):
        return [images]
    return list(images)


def image_batch(items: Sequence[ImageLike], transform: Callable[[Image.Image], torch.Tensor]) -> torch.Tensor:
    """``[B, 3, H, W]``: tensors are used as given, PIL images and paths go through ``transform``."""
    return torch.stack([item if isinstance(item, torch.Tensor) else transform(open_image(item)) for item in items])


def count_texts(texts: Texts) -> int:
    if isinstance(texts, Mapping):
        return int(texts["input_ids"].shape[0])
    return 1 if isinstance(texts, str) else len(texts)


def text_chunks(texts: Texts, tokenizer: ALBEFTokenizer, kind: str, max_tokens: int | None,
                batch_size: int) -> list[dict[str, torch.Tensor]]:
    """Token batches of at most ``batch_size`` texts, cleaned as ``kind`` (``caption`` or ``question``)."""
    if isinstance(texts, Mapping):
        ids, mask = texts["input_ids"], texts["attention_mask"]
        return [{"input_ids": ids[s:s + batch_size], "attention_mask": mask[s:s + batch_size]}
                for s in range(0, ids.shape[0], batch_size)]
    items = [texts] if isinstance(texts, str) else list(texts)
    clean = CLEANERS[kind]
    return [tokenizer([clean(t) for t in items[s:s + batch_size]], max_length=max_tokens, padding="longest",
                      truncation=max_tokens is not None)
            for s in range(0, len(items), batch_size)]
