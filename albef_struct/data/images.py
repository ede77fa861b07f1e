"""Resolving image paths from records and loading images as RGB, with errors that name the record."""

from __future__ import annotations

import functools
import io
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from .bad_records import BadRecordError

__all__ = ["decode_image_bytes", "resolve_image_path", "load_image", "to_rgb"]


def resolve_image_path(
    image: str,
    image_root: str | os.PathLike | None,
    *,
    source: str,
    record_index: int,
    field: str = "image",
) -> Path:
    """Absolute path of a record's image.

    Absolute paths are used as they are. Relative paths are joined to ``image_root``
    (and must not leave it via ``..``; a symlinked folder inside it is fine); with no
    ``image_root`` they are relative to the directory of the JSON file ``source``. The
    check is lexical and each root is resolved once: a corpus of a million records costs
    no file-system call per record here.
    """
    path = Path(os.path.expanduser(image))
    if path.is_absolute():
        return path
    if image_root is None:
        return _inside(_resolved(os.path.abspath(source)).parent, path)
    root = _resolved(os.path.abspath(os.path.expanduser(str(image_root))))
    resolved = _inside(root, path)
    if not resolved.is_relative_to(root):
        raise BadRecordError(
            source=source,
            row=record_index,
            field=field,
            reason="path escapes image_root",
            found=repr(image),
            expected=f"a path inside image_root {str(root)!r}",
            hint="Fix the path in the JSON, use an absolute path, or point image_root at a common parent folder.",
        )
    return resolved


@functools.lru_cache(maxsize=256)
def _resolved(absolute: str) -> Path:
    """``absolute`` with its symlinks resolved (keyed by absolute path: a change of directory cannot stale it)."""
    return Path(absolute).resolve()


def _inside(root: Path, relative: Path) -> Path:
    """``root / relative`` with ``.`` and ``..`` folded away (lexically)."""
    return Path(os.path.normpath(root / relative))


def load_image(path: str | os.PathLike, *, source: str, record_index: int, field: str = "image") -> Image.Image:
    """Open ``path`` and return a fully decoded RGB PIL image.

    Raises ``BadRecordError`` naming the JSON file, record and path for a missing, empty
    or unreadable file.
    """
    path = Path(path)

    def bad(reason: str, found: str, hint: str) -> BadRecordError:
        return BadRecordError(
            source=source, row=record_index, field=field, reason=reason,
            found=found, expected="a readable image file", hint=hint, path=str(path),
        )

    fix = "fix or remove the record, or set skip_bad_records=True to skip (and count) such records"
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise bad("missing image", "no such file", f"Check image_root and the path in the JSON; {fix}.") from None
    except OSError as err:
        raise bad("unreadable image", f"cannot stat the file ({err})", f"Check permissions; {fix}.") from None
    if size == 0:
        raise bad("unreadable image", "an empty (0-byte) file", f"Re-download or re-extract the image; {fix}.")
    try:
        return _decode(path)
    except _DECODE_ERRORS as err:
        raise bad(
            "unreadable image", f"a file PIL cannot decode ({type(err).__name__}: {err})",
            f"The file is corrupt or not an image; re-download it, or {fix}.",
        ) from None


def decode_image_bytes(data: bytes, *, source: str, record_index: int, path: str) -> Image.Image:
    """An image stored as bytes (e.g. in a tar shard) as RGB; ``BadRecordError`` naming ``source`` (the shard),
    the record and the original ``path`` when it cannot be decoded."""
    try:
        return _decode(io.BytesIO(data))
    except _DECODE_ERRORS as err:
        raise BadRecordError(
            source=source, row=record_index, field="image", reason="unreadable image", path=path,
            found=f"bytes PIL cannot decode ({type(err).__name__}: {err})", expected="a readable image",
            hint="Rewrite the shards from intact images (albef_struct.data_prep.make_shards), or set "
                 "skip_bad_records=True to skip (and count) such samples.",
        ) from None


_DECODE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def _decode(file: Any) -> Image.Image:
    with Image.open(file) as img:
        img.load()
        return to_rgb(img)


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB: 16/32-bit integer and float images are rescaled
    (not clipped), and transparent images are composited over white."""
    mode = img.mode
    if mode == "RGB":
        return img.copy()
    if mode.startswith("I;16") or mode in ("I", "F"):
        return Image.fromarray(_rescale_to_uint8(np.asarray(img), mode)).convert("RGB")
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _rescale_to_uint8(arr: np.ndarray, mode: str) -> np.ndarray:
    """Map a single-channel high-bit-depth array to uint8 by its nominal range.

    ``I;16*`` and non-negative ``I`` (how 16-bit PNG/TIFF files open) use 0..65535, ``F``
    in [0, 1] uses 0..1; anything else is min-max scaled.
    """
    arr = arr.astype(np.float64)
    lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
    if mode.startswith("I;16") or (mode == "I" and lo >= 0 and hi <= 65535):
        offset, span = 0.0, 65535.0
    elif mode == "F" and lo >= 0 and hi <= 1:
        offset, span = 0.0, 1.0
    else:
        offset, span = lo, max(hi - lo, 1e-12)
    return np.clip(np.rint((arr - offset) * (255.0 / span)), 0, 255).astype(np.uint8)
