"""Latent-geometry measures on known configurations, the PCA projection, the plot; linear probes."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from albef_struct.metrics import (
    alignment,
    geometry_report,
    linear_probe_accuracy,
    matched_cosine,
    mean_cosine_unmatched,
    modality_gap,
    pca_2d,
    plot_embeddings,
    probe_report,
    uniformity,
)


def _sphere(n: int, d: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=gen), dim=1)


def test_identical_modalities() -> None:
    x = _sphere(16, 8, 0)
    assert modality_gap(x, x.clone()) == pytest.approx(0.0, abs=1e-12)
    assert alignment(x, x.clone()) == pytest.approx(0.0, abs=1e-12)
    assert matched_cosine(x, x.clone()) == pytest.approx(1.0)


def test_opposite_modalities() -> None:
    e = torch.zeros(5, 3)
    e[:, 0] = 1.0
    assert modality_gap(e, -e) == pytest.approx(2.0)
    assert alignment(e, -e) == pytest.approx(4.0)  # ||x - y||^2 = 4
    assert alignment(e, -e, alpha=1) == pytest.approx(2.0)
    assert matched_cosine(e, -e) == pytest.approx(-1.0)
    assert mean_cosine_unmatched(e, -e) == pytest.approx(-1.0)


def test_alignment_and_cosines_by_hand() -> None:
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    text = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    # pair 0 orthogonal (||x-y||^2 = 2), pair 1 identical
    assert alignment(image, text) == pytest.approx(1.0)
    assert matched_cosine(image, text) == pytest.approx(0.5)
    # unmatched: cos(image0, text1) = 0, cos(image1, text0) = 1
    assert mean_cosine_unmatched(image, text) == pytest.approx(0.5)
    assert modality_gap(image, text) == pytest.approx(math.sqrt(0.5**2 + 0.5**2))


def test_unmatched_cosine_matches_the_full_matrix() -> None:
    image, text = _sphere(12, 6, 1), _sphere(12, 6, 2)
    sims = image.double() @ text.double().T
    off_diag = sims[~torch.eye(12, dtype=torch.bool)]
    assert mean_cosine_unmatched(image, text) == pytest.approx(off_diag.mean().item())
    assert matched_cosine(image, text) == pytest.approx(sims.diag().mean().item())


def test_uniformity_known_values() -> None:
    antipodal = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    assert uniformity(antipodal) == pytest.approx(-8.0)  # log exp(-2 * 4)
    assert uniformity(antipodal, t=1) == pytest.approx(-4.0)
    collapsed = torch.tensor([[0.6, 0.8]] * 5)
    assert uniformity(collapsed) == pytest.approx(0.0, abs=1e-12)
    # spread points are more uniform (lower) than clustered ones
    spread = _sphere(64, 3, 3)
    clustered = F.normalize(torch.tensor([1.0, 0.0, 0.0]) + 0.1 * _sphere(64, 3, 4), dim=1)
    assert uniformity(spread) < uniformity(clustered) < 0.0
    # very spread points: no underflow to -inf
    assert math.isfinite(uniformity(antipodal * 1, t=1000))


def test_geometry_report_keys_and_values() -> None:
    image, text = _sphere(10, 4, 5), _sphere(10, 4, 6)
    report = geometry_report(image, text)
    assert set(report) == {
        "modality_gap", "alignment", "uniformity_image", "uniformity_text",
        "uniformity_all", "matched_cosine", "unmatched_cosine",
    }
    assert all(isinstance(v, float) for v in report.values())
    assert report["uniformity_all"] == pytest.approx(uniformity(torch.cat([image, text])))
    assert report["modality_gap"] == pytest.approx(modality_gap(image, text))


def test_shape_errors() -> None:
    with pytest.raises(ValueError, match="same shape"):
        modality_gap(torch.ones(3, 2), torch.ones(4, 2))
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        alignment(torch.ones(3), torch.ones(3))
    with pytest.raises(ValueError, match="at least 2"):
        uniformity(torch.ones(1, 3))


def test_pca_2d_recovers_the_main_axes() -> None:
    gen = torch.Generator().manual_seed(7)
    coeffs = torch.randn(200, 2, generator=gen) * torch.tensor([5.0, 1.0])
    basis = torch.linalg.qr(torch.randn(6, 2, generator=gen)).Q.T  # two orthonormal 6-D directions
    points = coeffs @ basis + torch.tensor([3.0, -1, 0, 0, 2, 1])
    out = pca_2d(points)
    assert out.shape == (200, 2)
    assert out.mean(0).abs().max() < 1e-9
    centred = coeffs - coeffs.mean(0)
    for k in range(2):  # each principal component equals a planted coordinate up to sign
        corr = torch.corrcoef(torch.stack([out[:, k].float(), centred[:, k]]))[0, 1]
        assert abs(corr.item()) > 0.999
    assert torch.equal(pca_2d(points), out)  # deterministic, signs included
    assert pca_2d(torch.randn(4, 1, generator=gen)).shape == (4, 2)


def test_plot_embeddings_writes_a_png(tmp_path) -> None:
    image, text = _sphere(30, 8, 8), _sphere(30, 8, 9)
    path = plot_embeddings(image, text, tmp_path / "plots" / "gap.png", n_pairs=5, title="epoch 0")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000


# ---------------------------------------------------------------------------
# linear probes


def _blobs(n: int, d: int, labels: list[int], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Well-separated Gaussian blobs, one per label, centred at distinct far-apart points."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.tensor(labels)[torch.randint(len(labels), (n,), generator=gen)]
    centres = {
        lab: 10.0 * torch.randn(d, generator=torch.Generator().manual_seed(100 + i)) for i, lab in enumerate(labels)
    }
    x = torch.stack([centres[int(v)] for v in y]) + torch.randn(n, d, generator=gen)
    return x, y


def test_probe_separable_data_is_perfect() -> None:
    labels = [7, -3, 42]  # arbitrary integers, remapped internally
    train_x, train_y = _blobs(150, 5, labels, seed=0)
    test_x, test_y = _blobs(60, 5, labels, seed=1)
    assert linear_probe_accuracy(train_x, train_y, test_x, test_y) == 1.0


def test_probe_random_labels_are_near_chance() -> None:
    gen = torch.Generator().manual_seed(2)
    train_x, test_x = torch.randn(300, 16, generator=gen), torch.randn(2000, 16, generator=gen)
    train_y, test_y = torch.randint(4, (300,), generator=gen), torch.randint(4, (2000,), generator=gen)
    acc = linear_probe_accuracy(train_x, train_y, test_x, test_y)
    assert abs(acc - 0.25) < 0.05


def test_probe_is_deterministic_and_handles_edge_labels() -> None:
    train_x, train_y = _blobs(80, 4, [0, 1], seed=3)
    test_x, test_y = _blobs(40, 4, [0, 1], seed=4)
    a = linear_probe_accuracy(train_x, train_y, test_x, test_y, seed=5)
    assert a == linear_probe_accuracy(train_x, train_y, test_x, test_y, seed=5)
    # a test label never seen in training is always wrong
    unseen = test_y.clone()
    unseen[:10] = 9
    assert linear_probe_accuracy(train_x, train_y, test_x, unseen) == pytest.approx((40 - 10) / 40)
    # one training class: always predicted
    assert linear_probe_accuracy(train_x, torch.zeros(80, dtype=torch.long), test_x, test_y) == pytest.approx(
        (test_y == 0).double().mean().item()
    )
    with pytest.raises(ValueError, match="integer labels"):
        linear_probe_accuracy(train_x, train_y.float(), test_x, test_y)


def test_probe_report_per_feature_set_and_attribute() -> None:
    # attribute "colour" is visible only in the image features, "shape" only in the text
    gen = torch.Generator().manual_seed(6)
    n_train, n_test = 120, 60
    colour = torch.randint(2, (n_train + n_test,), generator=gen)
    shape = torch.randint(2, (n_train + n_test,), generator=gen)
    image = torch.randn(n_train + n_test, 3, generator=gen) + 8.0 * colour[:, None]
    text = torch.randn(n_train + n_test, 3, generator=gen) + 8.0 * shape[:, None]
    both = torch.cat([image, text], dim=1)
    split = lambda t: (t[:n_train], t[n_train:])  # noqa: E731
    report = probe_report(
        {"image": split(image), "text": split(text), "concat": split(both)},
        {"colour": split(colour), "shape": split(shape)},
    )
    assert set(report) == {"image", "text", "concat"}
    assert report["image"]["colour"] == 1.0 and report["text"]["shape"] == 1.0
    assert report["concat"]["colour"] == 1.0 and report["concat"]["shape"] == 1.0
    assert report["image"]["shape"] < 0.8 and report["text"]["colour"] < 0.8
