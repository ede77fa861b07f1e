"""`albef-struct analyze` and the demo-data experiments' smoke runs."""

from __future__ import annotations

import json

import pytest
import torch

from albef_struct.analysis import attribute_labels, embed_split
from albef_struct.cli import main
from albef_struct.data import ALBEFTokenizer
from albef_struct.lit.checkpoints import load_model
from albef_struct.checkpoint.errors import CheckpointError
from tests.test_cli import last_checkpoint, write_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory, demo_dir):  # noqa: F811
    tmp_path = tmp_path_factory.mktemp("analyze")
    assert main(["fit", "--config", str(write_config(tmp_path, demo_dir))]) == 0
    return last_checkpoint(tmp_path)


def test_analyze_writes_geometry_probes_and_picture(trained, demo_dir, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "analysis"
    args = ["analyze", "--ckpt", str(trained), "--data", str(demo_dir / "retrieval_test.json"),
            "--image-root", str(demo_dir), "--out", str(out),
            "--attributes", str(demo_dir / "attributes_test.json"),
            "--probe-train", str(demo_dir / "pretrain.json"),
            "--probe-train-attributes", str(demo_dir / "attributes_train.json")]
    assert main(args) == 0
    result = json.loads((out / "analysis.json").read_text())
    assert set(result["geometry"]) >= {"modality_gap", "alignment", "uniformity_image", "matched_cosine"}
    assert set(result["probes"]) == {"image", "text", "concat"}
    assert all(0.0 <= acc <= 1.0 for accs in result["probes"].values() for acc in accs.values())
    assert (out / "embeddings.png").stat().st_size > 1000
    assert "modality_gap" in capsys.readouterr().out


def test_embeddings_are_normalised_and_paired(trained, demo_dir):  # noqa: F811
    model = load_model(trained)
    split = embed_split(model, demo_dir / "retrieval_test.json", demo_dir, ALBEFTokenizer())
    assert split.image_feats.shape[0] == 8 and split.text_feats.shape[0] == 40
    torch.testing.assert_close(split.image_feats.norm(dim=-1), torch.ones(8))
    assert split.txt2img.tolist() == [i // 5 for i in range(40)]
    labels = attribute_labels(demo_dir / "attributes_test.json", split.images)
    assert {"first_shape", "first_colour", "num_objects"} <= set(labels)
    assert all(v.shape == (8,) for v in labels.values())


def test_probe_flags_must_come_together(trained, demo_dir, tmp_path):  # noqa: F811
    with pytest.raises(SystemExit):
        main(["analyze", "--ckpt", str(trained), "--data", str(demo_dir / "retrieval_test.json"),
              "--out", str(tmp_path), "--attributes", str(demo_dir / "attributes_test.json")])


def test_load_model_refuses_an_official_file():
    from tests.conftest import PARITY_DIR

    with pytest.raises(CheckpointError, match="albef-struct convert"):
        load_model(PARITY_DIR / "pretrain_checkpoint.pth")


@pytest.mark.parametrize("module", ["experiments.information_gap"])  # batch_size: test_batch_size_experiment.py
def test_experiment_quick_runs_write_json_and_png(module, tmp_path):
    experiment = __import__(module, fromlist=["main"])
    name = module.split(".")[-1]
    out = tmp_path / "out"
    assert experiment.main(["--quick", "--out", str(out), "--data", str(tmp_path / "data")]) == 0
    result = json.loads((out / f"{name}.json").read_text())
    assert result["conclusion"]
    assert (out / f"{name}.png").stat().st_size > 1000
