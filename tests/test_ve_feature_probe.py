"""experiments/ve_feature_probe.py: the feature sets, the probe table and its errors."""

from __future__ import annotations

import json

import pytest
import torch

from albef_struct.models import ALBEF
from experiments.ve_feature_probe import CONTRADICTION, ENTAILMENT, FEATURE_SETS, needs_image, parse_args, probe_table, run
from albef_struct.tasks.ve import VE_LABELS
from tests.conftest import tiny_config

NEUTRAL = VE_LABELS.index("neutral")


def synthetic_split(n: int, seed: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Labels cycling through the three classes; ``fused_cls`` encodes the label, ``itc`` only neutral-ness."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    noise = lambda: 0.1 * torch.randn(n, 6, generator=generator)  # noqa: E731
    fused = torch.nn.functional.one_hot(labels, 6).double() + noise()
    neutral_only = torch.nn.functional.one_hot((labels == NEUTRAL).long(), 6).double() + noise()
    features = {"fused_cls": fused, "itc": neutral_only, "text_only": neutral_only}
    return features, labels


def test_needs_image_keeps_entailment_and_contradiction_only():
    labels = torch.tensor([ENTAILMENT, NEUTRAL, CONTRADICTION, NEUTRAL])
    assert needs_image(labels).tolist() == [True, False, True, False]


def test_probe_table_separates_informative_from_hypothesis_only_features():
    table = probe_table(synthetic_split(90, seed=0), synthetic_split(60, seed=1))
    assert set(table) == set(FEATURE_SETS)
    assert table["fused_cls"] == {"acc": 100.0, "acc_entail_vs_contra": 100.0}
    # neutral is recognisable, entailment vs contradiction is not: a coin flip at best
    assert table["text_only"]["acc_entail_vs_contra"] <= 60.0
    assert table["text_only"]["acc"] < 80.0


def test_probe_table_names_the_missing_classes():
    features, labels = synthetic_split(30, seed=0)
    only_neutral = torch.full_like(labels, NEUTRAL)
    with pytest.raises(ValueError, match="entailment or contradiction"):
        probe_table((features, labels), (features, only_neutral))


def test_run_probes_a_model_on_ve_files_and_writes_the_table(demo_dir, tmp_path, capsys):
    torch.manual_seed(0)
    model = ALBEF(tiny_config())
    out = tmp_path / "probe.json"
    args = parse_args([
        "--ckpt", "unused", "--train", str(demo_dir / "ve_train.json"), "--eval", str(demo_dir / "ve_dev.json"),
        "--image-root", str(demo_dir), "--image-res", "32", "--batch-size", "16", "--out", str(out),
    ])
    result = run(model, args)

    written = json.loads(out.read_text())
    assert written == json.loads(json.dumps(result))
    for split, path in (("train", "ve_train.json"), ("eval", "ve_dev.json")):  # every record, none skipped
        assert written["pairs"][split] == len(json.loads((demo_dir / path).read_text()))
    for name in FEATURE_SETS:
        row = written["probes"][name]
        assert 0.0 <= row["acc"] <= 100.0 and 0.0 <= row["acc_entail_vs_contra"] <= 100.0
    printed = capsys.readouterr().out
    assert "fused_cls" in printed and "entail vs contra" in printed
    # the zero-shot table: every entailment/contradiction pair of the eval file counted once under "all"
    records = json.loads((demo_dir / "ve_dev.json").read_text())
    aucs = written["zero_shot_auc"]
    assert aucs["all"]["pairs"] == sum(r["label"] != "neutral" for r in records)
    assert sum(row["pairs"] for kind, row in aucs.items() if kind != "all") <= aucs["all"]["pairs"]
    for row in aucs.values():
        assert 0.0 <= row["itc_similarity"] <= 1.0 and 0.0 <= row["itm_logit"] <= 1.0
    assert "zero-shot AUC" in printed



def test_hypothesis_kind_names_every_template_of_the_demo_generator():
    import numpy as np

    from albef_struct.data_prep import pair_statements as S
    from albef_struct.data_prep.shapes import sample_scene
    from experiments.ve_feature_probe import hypothesis_kind

    expected = {S._ve_exists: "exists", S._ve_colour: "colour", S._ve_count: "count", S._ve_position: "position",
                S._ve_size: "size", S._ve_absent: "absent", S._ve_relation: "relation"}
    assert set(expected) == set(S.VE_CHECKABLE)
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(300):
        scene = sample_scene(rng)
        for template, kind in expected.items():
            for true in (True, False):
                sentence = template(scene, rng, true)
                if sentence is not None:
                    assert hypothesis_kind(sentence) == kind, sentence
                    seen.add(kind)
        assert hypothesis_kind(S.make_hypothesis(scene, "neutral", rng)) == "other"
    assert seen == set(expected.values())


def test_zero_shot_auc_ranks_entailed_above_contradicted_per_kind():
    from experiments.ve_feature_probe import zero_shot_auc

    E, C = ENTAILMENT, CONTRADICTION
    labels = torch.tensor([E, C, E, C, NEUTRAL, E, C, E])
    kinds = ["count", "count", "colour", "colour", "other", "size", "size", "exists"]
    scores = {"right": torch.tensor([0.9, 0.1, 0.8, 0.2, 5.0, 0.7, 0.3, 0.6]),
              "reversed": torch.tensor([0.1, 0.9, 0.2, 0.8, 5.0, 0.3, 0.7, 0.4])}
    table = zero_shot_auc(scores, labels, kinds)
    assert set(table) == {"all", "count", "colour", "size"}  # "exists" has no contradiction, "other" is neutral
    assert table["all"]["pairs"] == 7 and table["count"]["pairs"] == 2
    for kind in ("all", "count", "colour", "size"):
        assert table[kind]["right"] == pytest.approx(1.0)
        assert table[kind]["reversed"] == pytest.approx(0.0)
    tied = zero_shot_auc({"flat": torch.zeros(8)}, labels, kinds)
    assert tied["all"]["flat"] == pytest.approx(0.5)


def test_fused_cls_is_the_vector_the_ve_head_classifies(demo_dir, tmp_path):
    from dataclasses import replace

    from albef_struct.tasks.ve import VEModule, ve_logits
    from experiments.ve_feature_probe import loader_for, pair_features

    torch.manual_seed(0)
    model = ALBEF(replace(VEModule.task_spec.arch(tiny_config()), projections=True))  # VE's head plus the probe's ITC features
    args = parse_args(["--ckpt", "unused", "--train", "unused", "--eval", "unused", "--image-root", str(demo_dir),
                       "--image-res", "32", "--batch-size", "8", "--out", str(tmp_path / "unused.json")])
    loader = loader_for(str(demo_dir / "ve_dev.json"), args)
    features, labels = pair_features(model, loader)

    with torch.no_grad():
        batches = list(loader)
        expected = torch.cat([ve_logits(model, b["image"], b["input_ids"], b["attention_mask"]) for b in batches])
        expected_labels = torch.cat([b["label"] for b in batches])
        classified = model.cls_head(features["fused_cls"])
    torch.testing.assert_close(classified, expected)
    assert torch.equal(labels, expected_labels)
    assert features["itc"].shape[1] == 2 * features["text_only"].shape[1]


def test_a_task_checkpoint_is_refused_with_the_fix(tmp_path):
    from experiments.ve_feature_probe import load_pretraining_model

    with pytest.raises(SystemExit, match="no checkpoint at"):
        load_pretraining_model(str(tmp_path / "missing.ckpt"))
    not_lightning = tmp_path / "weights.pth"
    torch.save({"model": {}}, not_lightning)
    with pytest.raises(SystemExit, match=r"weights.pth could not be loaded as a pretraining checkpoint.*--ckpt must be"):
        load_pretraining_model(str(not_lightning))
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit, match=r"corrupt.ckpt could not be loaded as a pretraining checkpoint"):
        load_pretraining_model(str(corrupt))
