"""The regularizer experiment: regularized head training, its metrics and the sweep's summary."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from albef_struct.losses.contrastive import build_contrastive_loss
from albef_struct.structure import LatentFeatures, StructureLosses
from experiments.frozen_features import FrozenFeatures, ProjectionHeads, Regularization, shared_gradient_norms, train_heads
from experiments.regularizers import claims, grid, read_rows, summarise
from experiments.structure_features import downstream_accuracy
from tests.test_frozen_features import CAPTIONS, synthetic_features

ALL_THREE = [{"name": "feature_separation", "weight": 0.5}, {"name": "brownian_bridge", "weight": 2.0},
             {"name": "geometric_consistency", "weight": 0.1, "args": {"aug_match_weight": 0.0}}]


def random_latents(n: int = 6, d: int = 8, seed: int = 0) -> LatentFeatures:
    gen = torch.Generator().manual_seed(seed)
    unit = lambda: F.normalize(torch.randn(n, d, generator=gen), dim=-1).requires_grad_()  # noqa: E731
    return LatentFeatures(image=unit(), text=unit(), image_aug=unit(), text_aug=unit(), image_private=unit(),
                          text_private=unit(), image_private_aug=unit(), text_private_aug=unit(),
                          temp=torch.tensor(0.1))


def with_views(features: FrozenFeatures, seed: int = 1) -> FrozenFeatures:
    gen = torch.Generator().manual_seed(seed)
    features.train_image_aug = features.train_image + 0.1 * torch.randn(features.train_image.shape, generator=gen)
    pairs = torch.arange(features.num_pairs)
    features.pair_sibling = pairs - pairs % CAPTIONS + (pairs + 1) % CAPTIONS  # the image's other caption
    return features


def test_weighted_terms_sum_to_the_forward_total() -> None:
    losses, feats = StructureLosses(ALL_THREE), random_latents()
    total, _ = losses(feats)
    terms = losses.weighted_terms(feats)
    assert torch.allclose(sum(terms.values()), total)
    assert terms["geometric_consistency/aug_match"].item() == 0.0
    unweighted = losses.losses["brownian_bridge"].terms(feats)["bridge_image"]
    assert torch.allclose(terms["brownian_bridge/bridge_image"], 2.0 * unweighted)


def test_geometric_consistency_term_weights_select_terms() -> None:
    feats = random_latents()
    only_paired = StructureLosses([{"name": "geometric_consistency",
                                    "args": {"cross_symmetry_weight": 0.0, "intra_match_weight": 0.0,
                                             "aug_match_weight": 0.0}}])
    paired = ((feats.image * feats.text).sum(-1) - (feats.image_aug * feats.text_aug).sum(-1)).pow(2).mean()
    assert torch.allclose(only_paired(feats)[0], paired)


def test_shared_gradient_norms_match_a_direct_computation() -> None:
    heads = ProjectionHeads(4, 3, 5)
    x, y = torch.randn(6, 4), torch.randn(6, 3)
    zi, zt = heads(x, y)
    parts = {"a": (zi * zt).sum(), "b": zi.pow(3).sum()}
    norms = shared_gradient_norms(heads, parts)
    for name, part in parts.items():
        grads = torch.autograd.grad(part, heads.shared_parameters(), retain_graph=True, allow_unused=True)
        flat = torch.cat([g.flatten() for g in grads if g is not None])  # "b" never reaches the text head
        assert norms[name] == pytest.approx(flat.norm().item(), rel=1e-6)


def _shared_private_cosine(heads: ProjectionHeads, data: FrozenFeatures) -> dict[str, float]:
    shared, private = heads.embed_image(data.test_image), heads.private(data.test_image, data.test_text)[0]
    return {"abs_cos": (shared * private).sum(-1).abs().mean().item()}


def test_feature_separation_orthogonalises_private_features_and_records_gradient_norms() -> None:
    features = synthetic_features()
    common = dict(batch_size=8, lr=1e-2, embed_dim=16, probe=False, evaluate=_shared_private_cosine)
    sep = lambda w, ortho=1.0: Regularization(  # noqa: E731
        StructureLosses([{"name": "feature_separation", "weight": w, "args": {"ortho_weight": ortho}}]),
        grad_norm_steps=(0, 3))
    infonce = build_contrastive_loss("infonce")
    without_ortho = train_heads(features, infonce, epochs=15, seed=0, regularization=sep(1.0, 0.0), **common)
    strong_ortho = train_heads(features, infonce, epochs=15, seed=0, regularization=sep(1.0, 100.0), **common)
    assert strong_ortho["abs_cos"] < 0.7 * without_ortho["abs_cos"]  # held-out pairs
    trained = train_heads(features, infonce, epochs=15, seed=0, regularization=sep(1.0), **common)
    assert set(trained["grad_norms"]) == {"0", "3"}
    step0 = trained["grad_norms"]["0"]
    assert set(step0) == {"contrastive", "feature_separation/ortho", "feature_separation/private_nce",
                          "feature_separation/uniformity"}
    # only the orthogonality term reaches the shared heads; the other two act on the private heads alone
    assert step0["feature_separation/ortho"] > 0
    assert step0["feature_separation/private_nce"] == 0 and step0["feature_separation/uniformity"] == 0
    heavier = train_heads(features, infonce, epochs=1, seed=0, regularization=sep(10.0), **common)
    ratio = lambda r: r["grad_norms"]["0"]["feature_separation/ortho"] / r["grad_norms"]["0"]["contrastive"]  # noqa: E731
    assert ratio(heavier) == pytest.approx(10 * ratio(trained), rel=1e-5)


def test_second_view_needs_the_cached_views_and_then_trains() -> None:
    bridge = Regularization(StructureLosses([{"name": "brownian_bridge", "weight": 1.0}]), view="second_view")
    kwargs = dict(batch_size=8, epochs=1, seed=0, lr=1e-2, embed_dim=16, probe=False, regularization=bridge)
    with pytest.raises(ValueError, match="train_image_aug and pair_sibling"):
        train_heads(synthetic_features(), build_contrastive_loss("infonce"), **kwargs)
    result = train_heads(with_views(synthetic_features()), build_contrastive_loss("infonce"), **kwargs)
    assert result["grad_norms"]["0"]["brownian_bridge/bridge_image"] > 0
    with pytest.raises(ValueError, match="'teacher' or 'second_view'"):
        Regularization(StructureLosses([]), view="momentum")


def test_downstream_accuracy_reads_what_the_embeddings_hold() -> None:
    """A VE-like task: entailment when the hypothesis is the image's own caption, else contradiction."""
    data = synthetic_features(n_train=48, n_test=32, noise=0.1)
    result = train_heads(data, build_contrastive_loss("infonce"), batch_size=8, epochs=20, seed=0, lr=1e-2,
                         embed_dim=16, probe=False, evaluate=lambda h, d: {"heads": h})
    heads = result["heads"]

    def task(n_images: int, split: str) -> dict[str, torch.Tensor]:
        gen = torch.Generator().manual_seed(0 if split == "train" else 1)
        texts = data.train_text if split == "train" else data.test_text
        rows = torch.randint(n_images, (200,), generator=gen)
        match = torch.randint(2, (200,), generator=gen).bool()
        other = (rows + 1 + torch.randint(n_images - 1, (200,), generator=gen)) % n_images
        owner = torch.where(match, rows, other)
        label = torch.where(match, 0, 2)  # 0 entailment, 2 contradiction (VE_LABELS order)
        return {"image_rows": rows[:, None], "text": texts[owner * CAPTIONS], "label": label}

    downstream = {"ve": {"train": task(48, "train"), "test": task(32, "test")}}
    accuracy = downstream_accuracy(heads, data, downstream)
    assert accuracy["ve_acc"] > 0.8 and accuracy["ve_entail_vs_contra"] == accuracy["ve_acc"]
    perm = torch.randperm(200, generator=torch.Generator().manual_seed(3))
    shuffled = {"ve": {s: {**v, "label": v["label"][perm]} for s, v in downstream["ve"].items()}}
    assert downstream_accuracy(heads, data, shuffled)["ve_acc"] < 0.7


def _row(name: str, weight: float, seed: int, r1: float, pattern: float, cos: float = 0.5) -> dict:
    return {"config": {"group": "baseline" if name == "none" else "sweep", "name": name, "weight": weight,
                       "view": "teacher", "seed": seed},
            "result": {"r1": r1, "probe_pattern": pattern, "matched_cosine": cos,
                       "grad_norms": {"0": {"contrastive": 2.0, f"{name}/t": weight}}}}


def test_summary_picks_the_best_weight_that_keeps_retrieval_and_judges_the_claims() -> None:
    rows = [_row("none", 0.0, s, r1, p) for s, (r1, p) in enumerate([(50, 0.60), (52, 0.61), (54, 0.62)])]
    # weight 0.1 keeps R@1 and gains 4 stds on the pattern probe; weight 1 gains more but loses R@1
    rows += [_row("feature_separation", 0.1, s, r1, p) for s, (r1, p) in enumerate([(51, 0.64), (52, 0.65), (53, 0.66)])]
    rows += [_row("feature_separation", 1.0, s, r1, p) for s, (r1, p) in enumerate([(40, 0.80), (41, 0.81), (42, 0.82)])]
    rows += [_row("geometric_consistency", 1.0, s, 48, 0.61, cos=0.1) for s in range(3)]
    # when no weight keeps R@1, the one that loses least is reported, whatever its probe gain
    rows += [_row("geometric_consistency", 10.0, s, 40, 0.9, cos=0.05) for s in range(3)]
    summary = summarise(rows)
    sep = summary["claims"]["feature_separation"]
    assert sep["weight"] == 0.1 and sep["keeps_r1"] and sep["improves_2std"]
    assert sep["largest_gain"] == "probe_pattern" and sep["largest_gain_in_std"] == pytest.approx(4.0)
    gc = summary["claims"]["geometric_consistency"]
    assert gc["weight"] == 1.0 and not gc["keeps_r1"]
    assert gc["matched_cosine_ratio"] == pytest.approx(0.2) and not gc["keeps_matched_cosine"]
    assert not gc["improves_2std"]
    assert summary["table"]["feature_separation w=0.1"]["metrics"]["grad_share"]["0"]["feature_separation/t"] == \
        pytest.approx(0.05)
    assert claims({}) == {}


def test_grid_and_run_log(tmp_path) -> None:
    configs = grid((0.1, 1.0), (0, 1), ablate=True, views=True)
    assert len(configs) == 2 * (1 + 3 * 2 + 4 + 3 + 2 * 2)
    assert len({json.dumps(c, sort_keys=True) for c in configs}) == len(configs)
    log = tmp_path / "runs.jsonl"
    log.write_text(json.dumps(_row("none", 0.0, 0, 50, 0.6)) + "\n{broken\n")
    with pytest.raises(ValueError, match="line 2"):
        read_rows(log)


@pytest.mark.slow
def test_structure_features_encode_the_info_gap_demo_data(tmp_path) -> None:
    """The real encoders on a tiny information-gap demo set: views, siblings, probe rows, downstream rows."""
    from albef_struct.data_prep.demo_data import generate
    from experiments.structure_features import load_structure_features

    data = tmp_path / "demo"
    generate(data, n_train=10, n_val=4, n_test=6, info_gap=True)
    features, extras = load_structure_features(data)
    train = json.loads((data / "pretrain.json").read_text())
    assert features.train_image.shape[0] == len(train) and features.num_pairs == sum(len(r["caption"]) for r in train)
    assert set(features.train_labels) == {"shape", "colour", "pattern", "material"}
    # the second view is the same images, augmented: close to, but not equal to, the eval view
    assert features.train_image_aug.shape == features.train_image.shape
    assert not torch.allclose(features.train_image_aug, features.train_image)
    assert F.cosine_similarity(features.train_image_aug, features.train_image).mean() > 0.5
    # a pair's sibling shows the same image with another caption
    sibling = features.pair_sibling
    assert torch.equal(features.pair_image[sibling], features.pair_image) and (sibling != torch.arange(len(sibling))).all()
    # each image's text probe row is its first caption
    assert torch.equal(features.pair_image[extras["text_probe_rows"]["train"]], torch.arange(len(train)))
    ve = json.loads((data / "ve_test.json").read_text())
    test_images = [r["image"] for r in json.loads((data / "retrieval_test.json").read_text())]
    rows = extras["downstream"]["ve"]["test"]["image_rows"][:, 0].tolist()
    assert [test_images[r].rsplit(".", 1)[0] for r in rows] == [r["image"].rsplit(".", 1)[0] for r in ve]
    again, _ = load_structure_features(data)  # cached: the same tensors come back
    assert torch.equal(again.train_image_aug, features.train_image_aug)
