"""Latent-structure regularizers: hand-computed values, gradients, invariances, registry."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from albef_struct.structure import (
    STRUCTURE_LOSSES,
    BrownianBridgeLoss,
    FeatureSeparationLoss,
    GeometricConsistencyLoss,
    LatentFeatures,
    StructureLosses,
    StructureSpec,
    bridge_point,
    build_structure_loss,
)


def unit(*rows: list[float]) -> torch.Tensor:
    return F.normalize(torch.tensor(rows, dtype=torch.float64), dim=-1)


def random_unit(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1)


def full_feats(n: int = 3, d: int = 4, seed: int = 0) -> LatentFeatures:
    names = ["image", "text", "image_aug", "text_aug", "image_private", "text_private", "image_private_aug", "text_private_aug"]
    values = {name: random_unit(n, d, seed * 100 + k) for k, name in enumerate(names)}
    return LatentFeatures(**values, temp=torch.tensor(0.2, dtype=torch.float64))


# --- feature separation ----------------------------------------------------------------
def test_ortho_hand_computed_and_zero_when_private_orthogonal():
    image, text = unit([1, 0], [0, 1]), unit([1, 0], [0, 1])
    feats = LatentFeatures(
        image, text,
        image_private=unit([0.6, 0.8], [1, 0]), text_private=unit([0, 1], [0.8, 0.6]),
        image_private_aug=unit([1, 0], [0, 1]), text_private_aug=unit([1, 0], [0, 1]),
    )
    loss = FeatureSeparationLoss(temperature=0.5)
    # per-sample squared inner products: image (0.36, 0), text (0, 0.36); mean over N = 2
    assert loss.terms(feats)["ortho"].item() == pytest.approx(0.36, abs=1e-12)
    feats.image_private, feats.text_private = unit([0, 1], [1, 0]), unit([0, -1], [1, 0])
    assert loss.terms(feats)["ortho"].item() == pytest.approx(0.0, abs=1e-15)


def test_private_nce_positive_is_augmented_private_feature():
    p, pa = unit([1, 0], [0.6, 0.8]), unit([0.8, 0.6], [0, 1])
    feats = LatentFeatures(unit([1, 0], [0, 1]), unit([1, 0], [0, 1]),
                           image_private=p, text_private=p, image_private_aug=pa, text_private_aug=pa)
    tau = 0.5
    expected = 0.0
    for j in range(2):
        logits = [float(p[j] @ pa[k]) / tau for k in range(2)]
        expected += -(logits[j] - math.log(sum(math.exp(v) for v in logits))) / 2
    nce = FeatureSeparationLoss(temperature=tau).terms(feats)["private_nce"]
    assert nce.item() == pytest.approx(2 * expected, rel=1e-12)  # image + text, identical here
    # the temperature falls back to feats.temp
    feats.temp = torch.tensor(tau, dtype=torch.float64)
    assert FeatureSeparationLoss().terms(feats)["private_nce"].item() == pytest.approx(2 * expected, rel=1e-12)


def test_uniformity_hand_computed_and_paper_normaliser_adds_log_n():
    feats = LatentFeatures(unit([1, 0], [0, 1]), unit([1, 0], [0, 1]),
                           image_private=unit([1, 0], [-1, 0]), text_private=unit([0, 1], [0, -1]),
                           image_private_aug=unit([1, 0], [-1, 0]), text_private_aug=unit([0, 1], [0, -1]))
    pairs = FeatureSeparationLoss(temperature=1.0).terms(feats)["uniformity"]
    paper = FeatureSeparationLoss(temperature=1.0, uniformity_normalizer="paper").terms(feats)["uniformity"]
    # antipodal pairs: ‖u − v‖² = 4, so Σ_jk G = 2 + 2e^{-8} per modality
    assert pairs.item() == pytest.approx(math.log((4 + 4 * math.exp(-8)) / 4), rel=1e-12)
    assert paper.item() == pytest.approx(math.log((4 + 4 * math.exp(-8)) / 2), rel=1e-12)
    many = full_feats(n=5)
    diff = FeatureSeparationLoss(temperature=1.0, uniformity_normalizer="paper").terms(many)["uniformity"] \
        - FeatureSeparationLoss(temperature=1.0).terms(many)["uniformity"]
    assert diff.item() == pytest.approx(math.log(5), rel=1e-12)


def test_uniformity_lower_for_spread_than_collapsed_points():
    loss = FeatureSeparationLoss(temperature=1.0)
    spread = torch.eye(4, dtype=torch.float64)
    collapsed = unit([1, 0.01, 0, 0], [1, 0, 0.01, 0], [1, 0, 0, 0.01], [1, 0, 0, 0])
    assert loss.uniformity(spread, spread) < loss.uniformity(collapsed, collapsed)
    # both modalities' potentials are summed inside one log (as printed): collapsed → log 2
    assert loss.uniformity(collapsed, collapsed).item() == pytest.approx(math.log(2), abs=1e-3)


def test_feature_separation_matches_reference_sketch_and_weights():
    feats = full_feats()
    tau = 0.3
    sep = FeatureSeparationLoss(temperature=tau, uniformity_normalizer="paper")
    zv, zt, zvi, zti, zvia, ztia = (feats.image, feats.text, feats.image_private, feats.text_private,
                                    feats.image_private_aug, feats.text_private_aug)
    target = torch.arange(3)
    sketch = (((zv * zvi).sum(-1).pow(2) + (zt * zti).sum(-1).pow(2)).mean()
              + F.cross_entropy(zvi @ zvia.T / tau, target) + F.cross_entropy(zti @ ztia.T / tau, target)
              + torch.log((torch.exp(-2 * torch.cdist(zvi, zvi).pow(2)).sum()
                           + torch.exp(-2 * torch.cdist(zti, zti).pow(2)).sum()) / 3))
    torch.testing.assert_close(sep(feats), sketch)
    weighted = FeatureSeparationLoss(temperature=tau, ortho_weight=2.0, private_nce_weight=0.0, uniformity_weight=0.5)
    terms = weighted.terms(feats)
    torch.testing.assert_close(weighted(feats), 2 * terms["ortho"] + 0.5 * terms["uniformity"])
    assert set(terms) == {"ortho", "private_nce", "uniformity"}


def test_feature_separation_gradcheck():
    feats = full_feats(n=3, d=3)
    loss = FeatureSeparationLoss(temperature=0.4)
    names = ["image", "text", "image_private", "text_private", "image_private_aug", "text_private_aug"]
    inputs = tuple(getattr(feats, n).clone().requires_grad_() for n in names)

    def fn(*tensors):
        return loss(LatentFeatures(**dict(zip(names, tensors))))

    assert torch.autograd.gradcheck(fn, inputs)


# --- Brownian bridge -------------------------------------------------------------------
def test_bridge_hand_computed_t_weights_image():
    image, text = unit([1, 0]), unit([0, 1])
    loss = BrownianBridgeLoss(t=0.25)
    # mu = normalize(0.25·image + 0.75·text) = (1, 3)/√10
    mu = bridge_point(image, text, 0.25)
    torch.testing.assert_close(mu, unit([1, 3]))
    value = loss(LatentFeatures(image, text, image_aug=unit([1, 0])))
    assert value.item() == pytest.approx(2 - 2 / math.sqrt(10), rel=1e-12)


def test_bridge_matches_reference_closed_form():
    feats, t = full_feats(n=4, d=5), 0.3
    v, tx, a = feats.image, feats.text, feats.image_aug
    closed = 2 - 2 * (t * (v * a).sum(-1) + (1 - t) * (tx * a).sum(-1)) / torch.sqrt(
        t**2 + (1 - t) ** 2 + 2 * t * (1 - t) * (v * tx).sum(-1)
    )
    torch.testing.assert_close(BrownianBridgeLoss(t=t)(feats), closed.mean())


def test_bridge_zero_on_the_bridge_point_and_mirror():
    feats, t = full_feats(n=3, d=4), 0.25
    feats.image_aug = bridge_point(feats.image, feats.text, t)
    feats.text_aug = bridge_point(feats.text, feats.image, t)
    terms = BrownianBridgeLoss(t=t, mirror=True).terms(feats)
    assert set(terms) == {"bridge_image", "bridge_text"}
    assert terms["bridge_image"].item() == pytest.approx(0.0, abs=1e-14)
    assert terms["bridge_text"].item() == pytest.approx(0.0, abs=1e-14)
    assert set(BrownianBridgeLoss(t=t).terms(feats)) == {"bridge_image"}


def test_bridge_uniform_t_reproducible_and_in_range():
    feats = full_feats(n=6, d=4)

    def run(seed: int) -> torch.Tensor:
        loss = BrownianBridgeLoss(t_mode="uniform", t_min=0.1, t_max=0.4, generator=torch.Generator().manual_seed(seed))
        return loss(feats), loss.sample_t(1000, feats.image)

    (a, _), (b, _), (c, ts) = run(3), run(3), run(4)
    assert a.item() == b.item() and a.item() != c.item()
    assert 0.1 <= ts.min().item() and ts.max().item() <= 0.4
    # per-sample t: the loss is the mean of per-sample fixed-t losses with the same draws
    g = torch.Generator().manual_seed(3)
    t = 0.1 + 0.3 * torch.rand(6, generator=g, dtype=torch.float64)
    expected = (feats.image_aug - bridge_point(feats.image, feats.text, t)).pow(2).sum(-1).mean()
    torch.testing.assert_close(a, expected)


def test_bridge_detach_endpoints_stops_gradient():
    feats = full_feats()
    image = feats.image.clone().requires_grad_()
    aug = feats.image_aug.clone().requires_grad_()
    BrownianBridgeLoss(detach_endpoints=True)(LatentFeatures(image, feats.text, image_aug=aug)).backward()
    assert image.grad is None and aug.grad is not None


@pytest.mark.parametrize("mode", ["fixed", "uniform"])
def test_bridge_gradcheck(mode):
    feats = full_feats(n=3, d=3)
    inputs = (feats.image.clone().requires_grad_(), feats.text.clone().requires_grad_(),
              feats.image_aug.clone().requires_grad_(), feats.text_aug.clone().requires_grad_())

    def fn(image, text, image_aug, text_aug):
        loss = BrownianBridgeLoss(t_mode=mode, mirror=True, generator=torch.Generator().manual_seed(0))
        return loss(LatentFeatures(image, text, image_aug=image_aug, text_aug=text_aug))

    assert torch.autograd.gradcheck(fn, inputs)


# --- geometric consistency ---------------------------------------------------------------
def test_geometric_consistency_hand_computed():
    feats = LatentFeatures(unit([1, 0], [0, 1]), unit([1, 0], [0.6, 0.8]),
                           image_aug=unit([0, 1], [1, 0]), text_aug=unit([1, 0], [1, 0]))
    terms = GeometricConsistencyLoss().terms(feats)
    # S_VT = [[1, .6], [0, .8]]: asymmetry ±.6 → (.36 + .36)/N; S_VV = I vs S_TT off-diagonal .6
    assert terms["cross_symmetry"].item() == pytest.approx(0.36, abs=1e-12)
    assert terms["intra_match"].item() == pytest.approx(0.36, abs=1e-12)
    # image_aug Gram = I (no change); text_aug Gram = all ones vs S_TT off-diagonal .6 → 2·.16/2
    assert terms["aug_match"].item() == pytest.approx(0.16, abs=1e-12)
    # paired: (1, .8) vs (0, 1) → ((1)² + (.2)²)/2
    assert terms["paired_match"].item() == pytest.approx(0.52, abs=1e-12)


def test_geometric_consistency_matches_reference_sketch():
    feats = full_feats(n=4, d=3)
    zv, zt, zva, zta = feats.image, feats.text, feats.image_aug, feats.text_aug
    n = zv.shape[0]
    svt, svv, stt, sva, sta = zv @ zt.T, zv @ zv.T, zt @ zt.T, zva @ zva.T, zta @ zta.T
    sketch = (((svt - svt.T).pow(2).sum() + (svv - stt).pow(2).sum()) / n
              + ((svv - sva).pow(2).sum() + (stt - sta).pow(2).sum()) / n
              + ((zv * zt).sum(-1) - (zva * zta).sum(-1)).pow(2).mean())
    torch.testing.assert_close(GeometricConsistencyLoss()(feats), sketch)


def test_geometric_consistency_zero_for_symmetric_inputs():
    z = random_unit(4, 3, seed=7)
    terms = GeometricConsistencyLoss().terms(LatentFeatures(z, z.clone(), image_aug=z.clone(), text_aug=z.clone()))
    for name, value in terms.items():
        assert value.item() == pytest.approx(0.0, abs=1e-14), name


def test_geometric_consistency_gradcheck():
    feats = full_feats(n=3, d=3)
    inputs = tuple(t.clone().requires_grad_() for t in (feats.image, feats.text, feats.image_aug, feats.text_aug))

    def fn(image, text, image_aug, text_aug):
        return GeometricConsistencyLoss()(LatentFeatures(image, text, image_aug=image_aug, text_aug=text_aug))

    assert torch.autograd.gradcheck(fn, inputs)


# --- missing fields, registry ----------------------------------------------------------
@pytest.mark.parametrize(
    "loss, missing",
    [
        (FeatureSeparationLoss(temperature=0.1), "image_private"),
        (BrownianBridgeLoss(), "image_aug"),
        (BrownianBridgeLoss(mirror=True), "text_aug"),
        (GeometricConsistencyLoss(), "text_aug"),
    ],
)
def test_missing_fields_raise_naming_the_field(loss, missing):
    feats = full_feats()
    setattr(feats, missing, None)
    with pytest.raises(ValueError, match=f"LatentFeatures.{missing}"):
        loss(feats)


def test_feature_separation_without_temperature_raises():
    feats = full_feats()
    feats.temp = None
    with pytest.raises(ValueError, match="temperature"):
        FeatureSeparationLoss()(feats)


def test_loss_flags():
    assert FeatureSeparationLoss.needs_private and FeatureSeparationLoss.needs_aug
    assert not BrownianBridgeLoss.needs_private and BrownianBridgeLoss.needs_aug
    assert not GeometricConsistencyLoss.needs_private and GeometricConsistencyLoss.needs_aug


def test_registry_names_and_errors():
    assert set(STRUCTURE_LOSSES) == {"feature_separation", "brownian_bridge", "geometric_consistency"}
    with pytest.raises(ValueError, match="brownian_bridge.*feature_separation.*geometric_consistency"):
        build_structure_loss("orthogonality")
    with pytest.raises(ValueError, match="tt"):
        StructureLosses([StructureSpec("brownian_bridge", args={"tt": 0.3})])
    with pytest.raises(ValueError, match="more than once"):
        StructureLosses([StructureSpec("brownian_bridge"), StructureSpec("brownian_bridge")])
    with pytest.raises(ValueError, match="name"):
        StructureLosses([{"weight": 1.0}])


def test_structure_losses_weighted_sum_and_term_names():
    feats = full_feats()
    losses = StructureLosses([
        StructureSpec("brownian_bridge", weight=0.5, args={"t": 0.3, "mirror": True}),
        {"name": "geometric_consistency", "weight": 2.0},
    ])
    assert losses.needs_aug and not losses.needs_private and len(losses) == 2
    total, logs = losses(feats)
    bridge = BrownianBridgeLoss(t=0.3, mirror=True)(feats)
    gc = GeometricConsistencyLoss()(feats)
    torch.testing.assert_close(total, 0.5 * bridge + 2.0 * gc)
    assert set(logs) == {
        "brownian_bridge/bridge_image", "brownian_bridge/bridge_text", "brownian_bridge",
        "geometric_consistency/cross_symmetry", "geometric_consistency/intra_match",
        "geometric_consistency/aug_match", "geometric_consistency/paired_match", "geometric_consistency",
    }
    torch.testing.assert_close(logs["brownian_bridge"], 0.5 * bridge)
    torch.testing.assert_close(logs["geometric_consistency/paired_match"], GeometricConsistencyLoss().terms(feats)["paired_match"])
    assert all(not v.requires_grad for v in logs.values())

    sep = StructureLosses([StructureSpec("feature_separation", args={"temperature": 0.2})])
    assert sep.needs_private and sep.needs_aug
    empty_total, empty_logs = StructureLosses([])(feats)
    assert empty_total.item() == 0.0 and empty_logs == {}


def test_structure_losses_gradient_flows_to_online_features():
    feats = full_feats()
    feats.image.requires_grad_()
    total, _ = StructureLosses([StructureSpec("geometric_consistency")])(feats)
    total.backward()
    assert feats.image.grad is not None and torch.isfinite(feats.image.grad).all()
