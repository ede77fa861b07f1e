"""Zero-shot classification, k-shot probes, labelled image sets, and the on-disk search index."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from albef_struct import inference
from albef_struct.cli import main
from albef_struct.data_prep.demo_classification import generate as generate_classification
from albef_struct.inference.image_sets import image_files, labelled_images
from albef_struct.inference.search import SearchIndex, build_index
from albef_struct.inference.zero_shot import (
    class_embeddings,
    few_shot_accuracy,
    topk_accuracy,
    zero_shot_scores,
)

TEMPLATES = ["a {} on a plain background", "a single {}"]


@pytest.fixture(scope="module")
def classify_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("classify")
    generate_classification(out, image_size=32, train=3, test=2)
    return out


@pytest.fixture(scope="module")
def model(pretrain_ckpt):
    return inference.load(pretrain_ckpt)


def test_class_embeddings_average_the_prompts(model) -> None:
    classes = ["circle", "star"]
    expected = F.normalize(torch.stack([model.encode_text([t.format(c) for t in TEMPLATES]).mean(0) for c in classes]),
                           dim=-1)
    torch.testing.assert_close(class_embeddings(model, classes, TEMPLATES), expected, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="need a '\\{\\}'"):
        class_embeddings(model, classes, ["no slot"])


def test_zero_shot_scores_and_itm_reranking(model, classify_dir) -> None:
    test = labelled_images(classify_dir / "shape" / "test")
    feats = model.encode_image(test.paths)
    scores = zero_shot_scores(model, feats, test.classes, TEMPLATES)
    torch.testing.assert_close(scores, feats @ class_embeddings(model, test.classes, TEMPLATES).T)
    reranked = zero_shot_scores(model, test.paths[:2], test.classes, TEMPLATES, rerank_k=3)
    # embeddings computed once by the caller give the same scores (classify passes them)
    torch.testing.assert_close(zero_shot_scores(model, test.paths[:2], test.classes, TEMPLATES, rerank_k=3,
                                                image_feats=feats[:2]), reranked, atol=1e-6, rtol=0)
    for row in range(2):
        top3 = scores[row].topk(3).indices.tolist()
        itm = [model.match(test.paths[row], [t.format(test.classes[c]) for t in TEMPLATES]).mean().item() for c in top3]
        assert reranked[row].topk(3).indices.tolist() == [top3[i] for i in sorted(range(3), key=lambda i: -itm[i])]
        rest = [c for c in range(len(test.classes)) if c not in top3]
        torch.testing.assert_close(reranked[row, rest], scores[row, rest])
    with pytest.raises(ValueError, match="needs the images themselves"):
        zero_shot_scores(model, feats, test.classes, TEMPLATES, rerank_k=2)


def test_topk_accuracy_on_known_scores() -> None:
    scores = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.3, 0.5], [0.1, 0.8, 0.1], [0.5, 0.4, 0.1]])
    assert topk_accuracy(scores, [0, 1, 1, 2], ks=(1, 2, 5)) == {"top1": 50.0, "top2": 75.0}


def test_few_shot_probe_on_separable_and_on_random_features() -> None:
    generator = torch.Generator().manual_seed(0)
    centres = 5 * torch.eye(4)
    labels = torch.arange(4).repeat(10)
    train = centres[labels] + 0.1 * torch.randn(40, 4, generator=generator)
    test = centres[labels] + 0.1 * torch.randn(40, 4, generator=generator)
    result = few_shot_accuracy(train, labels, test, labels, shots=(1, 5), seeds=(0, 1, 2))
    assert result[1]["mean"] == 100.0 and result[5]["mean"] == 100.0 and len(result[5]["runs"]) == 3
    noise = torch.randn(40, 4, generator=generator)
    chance_like = few_shot_accuracy(noise, labels, torch.randn(40, 4, generator=generator), labels, shots=(5,))
    assert chance_like[5]["mean"] < 60.0
    with pytest.raises(ValueError, match="class 0 has 10 training images, fewer than 11 shots"):
        few_shot_accuracy(train, labels, test, labels, shots=(11,))


def test_labelled_images_from_a_folder_tree_and_a_json_list(classify_dir, tmp_path) -> None:
    tree = labelled_images(classify_dir / "colour" / "test")
    assert len(tree.classes) == 8 and len(tree.paths) == 16 and tree.labels.count(0) == 2
    records = [{"image": str(p.relative_to(classify_dir)), "label": tree.classes[y]}
               for p, y in zip(tree.paths, tree.labels)]
    (tmp_path / "list.json").write_text(json.dumps(records))
    listed = labelled_images(tmp_path / "list.json", image_root=classify_dir, classes=tree.classes)
    assert listed.paths == tree.paths and listed.labels == tree.labels
    (tmp_path / "bad.json").write_text(json.dumps([{"image": "a.jpg", "label": "red"}, {"label": "blue"}]))
    with pytest.raises(ValueError, match=r"bad.json, record 1: .* lacks \"image\""):
        labelled_images(tmp_path / "bad.json")
    with pytest.raises(ValueError, match=r"labels \['black', .*\] are not among the classes \['blue'\]"):
        labelled_images(tmp_path / "list.json", image_root=classify_dir, classes=["blue"])


def test_classify_command_writes_predictions_and_few_shot(pretrain_ckpt, classify_dir, tmp_path, capsys) -> None:
    out = tmp_path / "shape.json"
    assert main(["classify", "--ckpt", str(pretrain_ckpt), "--images", str(classify_dir / "shape" / "test"),
                 "--few-shot-train", str(classify_dir / "shape" / "train"), "--shots", "1", "3", "--seeds", "0", "1",
                 "--templates", *TEMPLATES, "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["count"] == 12 and result["chance_top1"] == pytest.approx(100 / 6)
    assert len(result["predictions"]) == 12 and all(len(p["top"]) == 5 for p in result["predictions"])
    top1 = sum(p["top"][0] == p["label"] for p in result["predictions"]) / 12 * 100
    assert result["zero_shot"]["top1"] == pytest.approx(top1)
    assert set(result["few_shot"]) == {"1", "3"} and len(result["few_shot"]["3"]["runs"]) == 2
    assert "zero-shot top1" in capsys.readouterr().out


def test_index_is_resumable_and_search_ranks_by_itc(model, pretrain_ckpt, classify_dir, tmp_path, capsys) -> None:
    images = classify_dir / "shape" / "test"
    files = image_files(images)
    index = build_index(model, pretrain_ckpt, images, tmp_path / "index", chunk_size=5)
    assert len(index) == 12 and sorted((tmp_path / "index").glob("chunk_*.pt"))[-1].name == "chunk_00002.pt"
    torch.testing.assert_close(index.feats, model.encode_image(files), atol=1e-6, rtol=0)
    # an interrupted build resumes: only the missing chunk is embedded again
    kept = (tmp_path / "index" / "chunk_00000.pt").stat().st_mtime_ns
    (tmp_path / "index" / "chunk_00001.pt").unlink()
    with pytest.raises(FileNotFoundError, match=r"chunk\(s\) \[1\] of 3 are missing"):
        SearchIndex.open(tmp_path / "index")
    resumed = build_index(model, pretrain_ckpt, images, tmp_path / "index", chunk_size=5)
    assert (tmp_path / "index" / "chunk_00000.pt").stat().st_mtime_ns == kept
    torch.testing.assert_close(resumed.feats, index.feats)
    with pytest.raises(ValueError, match="holds an index of another"):
        build_index(model, pretrain_ckpt, images, tmp_path / "index", chunk_size=4)

    hits = index.search(model, "a red star", top=3)
    expected = model.similarity(files, ["a red star"]).squeeze(1).topk(3)
    assert [h.path for h in hits] == [str(files[i]) for i in expected.indices.tolist()]
    reranked = index.search(model, "a red star", top=3, rerank_k=6)
    assert [h.itm for h in reranked] == sorted((h.itm for h in reranked), reverse=True)
    pool = {str(files[i]) for i in model.similarity(files, ["a red star"]).squeeze(1).topk(6).indices.tolist()}
    assert {h.path for h in reranked} <= pool

    assert main(["search", "--index", str(tmp_path / "index"), "--query", "a red star", "--top", "2", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert [h["path"] for h in printed["a red star"]] == [h.path for h in hits[:2]]


def test_classify_index_and_search_take_an_official_layout_file(pretrain_ckpt, classify_dir, tmp_path) -> None:
    """The commands on an official-layout ALBEF file (written here from the tiny checkpoint, the real vocabulary):
    the same numbers as on the project checkpoint it came from."""
    from albef_struct.checkpoint.export import export_albef
    from albef_struct.checkpoint.files import load_checkpoint_file

    state = load_checkpoint_file(pretrain_ckpt)["state_dict"]
    official = tmp_path / "ALBEF_tiny.pth"
    torch.save({"model": export_albef(state, "pretrain")}, official)
    ours = inference.load(pretrain_ckpt)
    theirs = inference.load(official, arch=ours.config)  # its 2 heads of width 32 are not width / 64
    assert theirs.kind == "pretrain"
    images = classify_dir / "colour" / "test"
    torch.testing.assert_close(theirs.similarity(image_files(images), ["a red star"]),
                               ours.similarity(image_files(images), ["a red star"]), atol=1e-6, rtol=0)
    index = build_index(theirs, official, images, tmp_path / "index", chunk_size=8)
    assert [h.path for h in index.search(theirs, "a red star", top=3)] == \
        [h.path for h in build_index(ours, pretrain_ckpt, images, tmp_path / "ours", chunk_size=8)
         .search(ours, "a red star", top=3)]
    scores = zero_shot_scores(theirs, image_files(images), labelled_images(images).classes, TEMPLATES)
    torch.testing.assert_close(scores, zero_shot_scores(ours, image_files(images), labelled_images(images).classes,
                                                        TEMPLATES), atol=1e-6, rtol=0)


def test_commands_take_an_arch_override_for_official_files(pretrain_ckpt, classify_dir, tmp_path, capsys) -> None:
    """``--arch`` changes only the keys it names (here the head counts, which shapes cannot tell): classify, index
    and search on the official file then print what they print for the project checkpoint; without it they differ."""
    from albef_struct.checkpoint.export import export_albef
    from albef_struct.checkpoint.files import load_checkpoint_file

    official = tmp_path / "ALBEF_tiny.pth"
    torch.save({"model": export_albef(load_checkpoint_file(pretrain_ckpt)["state_dict"], "pretrain")}, official)
    ours = inference.load(pretrain_ckpt).config
    arch_file = tmp_path / "heads.yaml"
    arch_file.write_text(f"vision: {{heads: {ours.vision.heads}}}\ntext: {{heads: {ours.text.heads}}}\n")
    assert inference.load(official, arch={"vision": {"heads": ours.vision.heads},
                                          "text": {"heads": ours.text.heads}}).config == ours
    images = str(classify_dir / "colour" / "test")

    def classify(ckpt, *extra):
        out = tmp_path / f"classify_{len(list(tmp_path.glob('classify_*')))}.json"
        assert main(["classify", "--ckpt", str(ckpt), "--images", images, "--templates", *TEMPLATES,
                     "--out", str(out), *extra]) == 0
        return [p["top"] for p in json.loads(out.read_text())["predictions"]]

    def search(ckpt, name, *extra):
        assert main(["index", "--ckpt", str(ckpt), "--images", images, "--out", str(tmp_path / name), *extra]) == 0
        capsys.readouterr()
        assert main(["search", "--index", str(tmp_path / name), "--query", "a red star", "--top", "4", "--json"]) == 0
        return [(h["path"], round(h["score"], 5)) for h in json.loads(capsys.readouterr().out)["a red star"]]

    assert classify(official, "--arch", str(arch_file)) == classify(pretrain_ckpt)
    assert search(official, "theirs", "--arch", str(arch_file)) == search(pretrain_ckpt, "ours")
    assert search(official, "guessed") != search(pretrain_ckpt, "ours2")  # one head per 64 channels: another model


def test_arch_override_names_an_unknown_key(pretrain_ckpt) -> None:
    from albef_struct.checkpoint.errors import CheckpointError

    with pytest.raises(CheckpointError, match=r"unknown vision key\(s\) \['head'\]"):
        inference.load(pretrain_ckpt, arch={"vision": {"head": 4}})
    assert inference.load(pretrain_ckpt, arch={"embed_dim": inference.load(pretrain_ckpt).config.embed_dim})
