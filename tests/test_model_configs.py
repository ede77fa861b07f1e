"""The ALBEF-base model built from configs/pretrain.yaml, without running it (meta device)."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from albef_struct.checkpoint.keymap import convert_albef_state_dict
from albef_struct.lit.pretrain import PretrainModule
from albef_struct.models import ALBEFConfig
from tests.conftest import KEYS_FILE, REPO


@pytest.fixture(scope="module")
def albef_base() -> PretrainModule:
    config = yaml.safe_load((REPO / "configs" / "pretrain.yaml").read_text())
    args = config["model"]["init_args"]
    arch = ALBEFConfig.from_dict(args["arch"])
    with torch.device("meta"):
        return PretrainModule(arch=arch, queue_size=args["queue_size"], momentum=args["momentum"])


def official_keys() -> list[dict]:
    payload = json.loads(KEYS_FILE.read_text())
    assert payload["count"] == len(payload["keys"])
    return payload["keys"]


def test_every_official_pretraining_key_maps_onto_albef_base_with_its_shape(albef_base):
    entries = official_keys()
    assert len(entries) == 844
    state = {e["key"]: torch.empty(e["shape"], device="meta") for e in entries}
    mapped, report = convert_albef_state_dict(state, fusion_layer=6)
    own = albef_base.state_dict()
    for source, target in report.mapped.items():
        assert target in own, f"{source} -> {target} is not a parameter of the model"
        assert tuple(own[target].shape) == tuple(state[source].shape), source
    # everything dropped is an explained alias or the obsolete position-id buffer
    assert set(report.dropped) == {
        "text_encoder.bert.embeddings.position_ids",
        "text_encoder_m.bert.embeddings.position_ids",
        "text_encoder.cls.predictions.decoder.bias",
        "text_encoder_m.cls.predictions.decoder.bias",
    }
    # and every tensor of the model is covered by the official file, except the new image-id queue
    assert set(own) - set(mapped) == {"queue.idx"}


def test_albef_base_parameter_count(albef_base):
    online = sum(p.numel() for p in albef_base.model.parameters())
    teacher = sum(p.numel() for p in albef_base.teacher.parameters())
    # ViT-B/16@256 85.9M + BERT-base with 6 cross-attention layers and MLM head + projections/ITM
    entries = official_keys()
    aliases = ("position_ids", "cls.predictions.decoder.weight", "cls.predictions.decoder.bias")
    official_online = sum(
        torch.Size(e["shape"]).numel()
        for e in entries
        if "_m." not in e["key"] and "queue" not in e["key"] and not e["key"].endswith(aliases)
    )
    assert online == official_online
    assert teacher == online - (768 * 2 + 2) - 1  # no ITM head, no temperature
    assert albef_base.queue.image_feats.shape == (256, 65536)
    assert albef_base.model.visual_encoder.pos_embed.shape == (1, 257, 768)


@pytest.mark.parametrize("recipe", ["pretrain", "nlvr_pretrain", "nlvr", "retrieval_coco", "retrieval_flickr",
                                    "ve", "vqa"])
def test_full_recipes_write_where_the_readme_says(recipe: str) -> None:
    """Each real recipe writes runs/<recipe>/, its checkpoints to runs/<recipe>/checkpoints (last.ckpt)."""
    trainer = yaml.safe_load((REPO / "configs" / f"{recipe}.yaml").read_text())["trainer"]
    assert trainer["default_root_dir"] == f"runs/{recipe}"
    checkpoints = [c["init_args"] for c in trainer["callbacks"] if c["class_path"].endswith("ModelCheckpoint")]
    assert len(checkpoints) == 1
    assert checkpoints[0]["dirpath"] == f"runs/{recipe}/checkpoints" and checkpoints[0]["save_last"] is True
