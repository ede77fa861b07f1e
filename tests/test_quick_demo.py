"""`make demo` (the quick profile) end to end at a tiny size: every stage runs and the table is complete.

The Makefile target itself runs, in a scratch folder that links the repository's configs,
virtual environment and converted DINOv2 weights, with tiny demo data (DEMO_DATA_ARGS) and
an overlay (DEMO_EXTRA) that cuts every stage to two steps and small batches.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
import yaml

from tests.conftest import REPO

pytestmark = pytest.mark.slow

LINKED = ("configs", ".venv", ".cache", "setup.cfg", "pyproject.toml", "constraints.txt")
SMOKE = {
    "trainer": {"limit_train_batches": 2, "limit_val_batches": 1, "enable_progress_bar": False,
                "enable_model_summary": False},
    "data": {"init_args": {"batch_size": 8, "eval_batch_size": 16}},
}


def test_make_demo_runs_every_stage_and_writes_the_table(tmp_path):
    if shutil.which("make") is None or not (REPO / ".venv" / "bin" / "albef-struct").exists():
        pytest.fail("make and the project's .venv are needed (make test installs the .venv)")
    for name in LINKED:
        (tmp_path / name).symlink_to(REPO / name)
    (tmp_path / "smoke.yaml").write_text(yaml.safe_dump(SMOKE))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        ["make", "-f", str(REPO / "Makefile"), "demo", "DEMO_EXTRA=--config smoke.yaml",
         "DEMO_DATA_ARGS=--image-size 64 --n-train 48 --n-val 16 --n-test 16",
         "CLASSIFY_DATA_ARGS=--image-size 32 --train 5 --test 2", "CLASSIFY_SHOTS=1 5",
         "GROUNDING_DATA_ARGS=--train 8 --val 2 --test 6"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1500,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for stage in range(1, 9):
        assert f"] {stage}/8 " in done.stdout  # one progress line per stage, with the time
    summary = json.loads((tmp_path / "runs/demo_quick/summary.json").read_text())
    assert summary and all(row["value"] is not None and row["blind"] is not None for row in summary)
    assert (tmp_path / "runs/demo_quick/summary.png").stat().st_size > 10_000
    from albef_struct.data.image_cache import ImageTokenCache

    cache = ImageTokenCache.load(tmp_path / "data/demo/image_tokens_56_blocks8.pt")
    assert cache.frozen_blocks == 8 and not any(k.startswith(("classify/", "grounding/")) for k in cache.rows)
    assert (tmp_path / "runs/demo_quick/grounding/checkpoints/last.ckpt").is_file()  # grounding was fine-tuned
    rows = {row["label"]: row for row in summary}
    for attribute, classes in (("shape", 6), ("colour", 8)):
        zero_shot = rows[f"{attribute}: zero-shot top-1 (prompts, pretrained model)"]
        assert zero_shot["chance"] == pytest.approx(100 / classes) and 0 <= zero_shot["value"] <= 100
        assert f"{attribute}: 5-shot linear probe, mean of 3 seeds" in rows
    grounding = rows["top proposal by Grad-CAM, IoU >= 0.5 (blind: centre box)"]
    assert grounding["stage"] == "grounding" and 0 < grounding["chance"] < 100  # 2-4 proposals a scene
    print(done.stdout[-2000:], file=sys.stderr)
    check_inference_on_demo_checkpoints(tmp_path / "runs/demo_quick", tmp_path / "data/demo")


def test_quick_res_sets_the_image_size_and_the_token_caches_of_every_stage():
    """`make demo QUICK_RES=84`: both caches are built at 84 px and every training or test call reads them at 84."""
    dry = subprocess.run(["make", "-n", "-f", str(REPO / "Makefile"), "demo", "QUICK_RES=84", "QUICK_PRECISION="],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert dry.returncode == 0, dry.stderr[-2000:]
    lines = dry.stdout.splitlines()
    caches = [line for line in lines if "albef-struct cache-images" in line]
    assert len(caches) == 2 and all("--img-size 84" in line for line in caches)
    calls = [line for line in lines if "albef-struct fit" in line or "albef-struct test" in line]
    # pretraining, grounding, the loop over retrieval / SNLI-VE / VQA, NLVR2's two stages: each tests in its fit
    assert len(calls) == 5 and all("--model.init_args.arch.vision.img_size 84" in line for line in calls)
    for line in calls:
        grounding = "configs/demo/grounding.yaml" in line
        cache = "data/demo/grounding/image_tokens_84_blocks8.pt" if grounding else "data/demo/image_tokens_84_blocks8.pt"
        assert f"--data.init_args.image_cache {cache}" in line, line
    assert "56" not in " ".join(caches + calls)


def check_inference_on_demo_checkpoints(runs, data) -> None:
    """Every albef_struct.inference call works on the checkpoints `make demo` writes."""
    from albef_struct import inference

    def records(name: str) -> list[dict]:
        return json.loads((data / name).read_text())[:4]

    def image(path: str):
        return data / (path if path.endswith(".jpg") else f"{path}.jpg")

    retrieval = records("retrieval_test.json")
    for ckpt in ("pretrain/checkpoints/last.ckpt", "retrieval/checkpoints/best.ckpt"):
        model = inference.load(runs / ckpt)
        sims = model.similarity([image(r["image"]) for r in retrieval], [r["caption"][0] for r in retrieval])
        assert sims.shape == (4, 4) and torch.all(sims.abs() <= 1 + 1e-5)
        match = model.match([image(r["image"]) for r in retrieval], [r["caption"][0] for r in retrieval])
        assert match.shape == (4,) and torch.all((match >= 0) & (match <= 1))
    ve = records("ve_test.json")
    predictions = inference.load(runs / "ve/checkpoints/best.ckpt").predict([image(r["image"]) for r in ve],
                                                                            [r["sentence"] for r in ve])
    assert {p.label for p in predictions} <= {"entailment", "neutral", "contradiction"}
    nlvr = records("nlvr_test.json")
    predictions = inference.load(runs / "nlvr/checkpoints/best.ckpt").predict(
        [tuple(image(i) for i in r["images"]) for r in nlvr], [r["sentence"] for r in nlvr])
    assert {p.label for p in predictions} <= {"True", "False"}
    vqa = records("vqa_test.json")
    answers = inference.load(runs / "vqa/checkpoints/best.ckpt").answer(  # the answer list comes with the checkpoint
        [image(r["image"]) for r in vqa], [r["question"] for r in vqa], top=3)
    answer_list = set(json.loads((data / "answer_list.json").read_text()))
    assert all(len(row) == 3 and {a.answer for a in row} <= answer_list for row in answers)
