"""Image transforms: ALBEF's RandomAugment and the pretrain / fine-tune / test pipelines."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as F

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "ALBEF_OPS",
    "MAX_LEVEL",
    "RandomAugment",
    "op_argument",
    "apply_op",
    "pretrain_transform",
    "train_transform",
    "test_transform",
]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

MAX_LEVEL = 10.0
FILL = [128.0, 128.0, 128.0]
ALBEF_OPS = (
    "Identity",
    "AutoContrast",
    "Equalize",
    "Brightness",
    "Sharpness",
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
    "Rotate",
)
# Value at magnitude MAX_LEVEL; the argument at magnitude M is (M / MAX_LEVEL) * this.
_SHEAR_MAX = 0.3  # shear coefficient (tan of the shear angle)
_TRANSLATE_MAX = 10.0  # pixels, whatever the image size
_ROTATE_MAX = 30.0  # degrees
_SIGNED = {"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"}


def op_argument(name: str, magnitude: float, negate: bool = False) -> float | None:
    """The argument ALBEF's RandomAugment passes to op ``name`` at ``magnitude`` (0..10).

    Enhance ops get a factor ``(M/10)*1.8 + 0.1`` (1.36 at M=7, never negated); shear a
    coefficient ±``(M/10)*0.3``; translate ±``(M/10)*10`` px; rotate ±``(M/10)*30`` degrees.
    Identity/AutoContrast/Equalize take none.
    """
    level = magnitude / MAX_LEVEL
    if name in ("Identity", "AutoContrast", "Equalize"):
        return None
    if name in ("Brightness", "Sharpness"):
        return level * 1.8 + 0.1
    if name in ("ShearX", "ShearY"):
        value = level * _SHEAR_MAX
    elif name in ("TranslateX", "TranslateY"):
        value = level * _TRANSLATE_MAX
    elif name == "Rotate":
        value = level * _ROTATE_MAX
    else:
        raise ValueError(f"Unknown RandomAugment op {name!r}; known ops: {', '.join(ALBEF_OPS)}.")
    return -value if negate else value


def apply_op(img: Any, name: str, arg: float | None) -> Any:
    """Apply one RandomAugment op to a PIL image or uint8 image tensor."""
    bilinear = InterpolationMode.BILINEAR
    if name == "Identity":
        return img
    if name == "AutoContrast":
        return F.autocontrast(img)
    if name == "Equalize":
        return F.equalize(img)
    if name == "Brightness":
        return F.adjust_brightness(img, arg)
    if name == "Sharpness":
        return F.adjust_sharpness(img, arg)
    if name in ("ShearX", "ShearY"):
        # ALBEF shears about the centre of the top-left pixel (row 0 stays put) with coefficient `arg`.
        degrees = math.degrees(math.atan(arg))
        shear = [degrees, 0.0] if name == "ShearX" else [0.0, degrees]
        return F.affine(img, angle=0.0, translate=[0, 0], scale=1.0, shear=shear,
                        interpolation=bilinear, fill=FILL, center=[0.5, 0.5])
    if name in ("TranslateX", "TranslateY"):
        shift = [arg, 0.0] if name == "TranslateX" else [0.0, arg]
        return F.affine(img, angle=0.0, translate=shift, scale=1.0, shear=[0.0, 0.0],
                        interpolation=bilinear, fill=FILL)
    if name == "Rotate":
        return F.rotate(img, arg, interpolation=bilinear, fill=FILL)
    raise ValueError(f"Unknown RandomAugment op {name!r}; known ops: {', '.join(ALBEF_OPS)}.")


class RandomAugment(v2.Transform):
    """ALBEF's RandomAugment: ``num_ops`` ops drawn with replacement, each applied with prob ``p``.

    Not torchvision's RandAugment (different op set and magnitudes). Randomness comes from
    ``generator`` or, by default, torch's global RNG (seeded per worker by Lightning).

    Args:
        num_ops: how many ops to draw per image (ALBEF: 2).
        magnitude: strength on a 0..10 scale (ALBEF: 7).
        ops: op names to draw from (default: ALBEF's ten).
        p: probability that each drawn op is applied (ALBEF: 0.5).
        generator: optional ``torch.Generator`` for reproducible draws.
    """

    def __init__(
        self,
        num_ops: int = 2,
        magnitude: float = 7,
        ops: Sequence[str] = ALBEF_OPS,
        p: float = 0.5,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        unknown = [op for op in ops if op not in ALBEF_OPS]
        if unknown or not ops:
            raise ValueError(f"RandomAugment ops must be a non-empty subset of {list(ALBEF_OPS)}; got unknown {unknown}.")
        if not 0 <= magnitude <= MAX_LEVEL:
            raise ValueError(f"RandomAugment magnitude must lie in [0, {MAX_LEVEL:g}], got {magnitude}.")
        self.num_ops = int(num_ops)
        self.magnitude = float(magnitude)
        self.ops = tuple(ops)
        self.p = float(p)
        self.generator = generator

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        g = self.generator
        chosen = torch.randint(len(self.ops), (self.num_ops,), generator=g).tolist()
        applied = (torch.rand(self.num_ops, generator=g) < self.p).tolist()
        negate = (torch.rand(self.num_ops, generator=g) < 0.5).tolist()
        steps = []
        for op_idx, use, neg in zip(chosen, applied, negate):
            name = self.ops[op_idx]
            if use:
                steps.append((name, op_argument(name, self.magnitude, negate=neg and name in _SIGNED)))
        return {"steps": steps}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        for name, arg in params["steps"]:
            inpt = apply_op(inpt, name, arg)
        return inpt

    def extra_repr(self) -> str:
        return f"num_ops={self.num_ops}, magnitude={self.magnitude:g}, p={self.p:g}, ops={list(self.ops)}"


def _to_normalized_tensor() -> list[v2.Transform]:
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(CLIP_MEAN, CLIP_STD)]


def _augmenting_transform(
    image_res: int, crop_scale: tuple[float, float], hflip: bool, randaugment: bool
) -> v2.Compose:
    steps: list[v2.Transform] = [
        v2.RandomResizedCrop(image_res, scale=tuple(crop_scale), interpolation=InterpolationMode.BICUBIC)
    ]
    if hflip:
        steps.append(v2.RandomHorizontalFlip())
    if randaugment:
        steps.append(RandomAugment(2, 7))
    return v2.Compose(steps + _to_normalized_tensor())


def pretrain_transform(
    image_res: int = 256,
    crop_scale: tuple[float, float] = (0.2, 1.0),
    hflip: bool = True,
    randaugment: bool = True,
) -> v2.Compose:
    """Pretraining: bicubic random-resized crop → (flip) → (RandomAugment) → float → CLIP normalise."""
    return _augmenting_transform(image_res, crop_scale, hflip, randaugment)


def train_transform(
    image_res: int = 384,
    crop_scale: tuple[float, float] = (0.5, 1.0),
    hflip: bool = True,
    randaugment: bool = True,
) -> v2.Compose:
    """Fine-tuning: as pretraining but with a milder crop scale."""
    return _augmenting_transform(image_res, crop_scale, hflip, randaugment)


def test_transform(image_res: int = 384) -> v2.Compose:
    """Evaluation: bicubic resize to ``image_res``² → float → CLIP normalise."""
    return v2.Compose(
        [v2.Resize((image_res, image_res), interpolation=InterpolationMode.BICUBIC)] + _to_normalized_tensor()
    )
test_transform.__test__ = False  # keep pytest from collecting it when imported into a test module
