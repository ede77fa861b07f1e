"""Fitting a pretraining state dict onto task modules: decoder, NLVR pairs, pos-embed, momentum, reports."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from albef_struct.checkpoint.errors import CheckpointError
from albef_struct.checkpoint.fit import adapt_state_dict
from albef_struct.models import ALBEF, MomentumTeacher, VisionConfig
from tests.conftest import tiny_config


class Holder(nn.Module):
    def __init__(self, model: ALBEF, teacher: bool = True):
        super().__init__()
        self.model = model
        self.teacher = MomentumTeacher(model, 0.995, exclude=("itm_head", "temp")) if teacher else None


def pretrain_state(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return Holder(ALBEF(tiny_config())).state_dict()


def test_vqa_decoder_is_built_from_fusion_layers_embeddings_and_mlm_head():
    source = pretrain_state()
    target = Holder(ALBEF(tiny_config(projections=False, itm_head=False, mlm_head=False, answer_decoder_layers=1)))
    state, report = adapt_state_dict(source, target.state_dict())
    assert torch.equal(state["model.answer_decoder.layer.0.attention.self.query.weight"], source["model.fusion_encoder.layer.0.attention.self.query.weight"])
    assert torch.equal(state["model.answer_decoder.embeddings.word_embeddings.weight"], source["model.text_encoder.embeddings.word_embeddings.weight"])
    assert torch.equal(state["model.answer_decoder.head.transform.dense.weight"], source["model.mlm_head.transform.dense.weight"])
    assert torch.equal(state["teacher.model.answer_decoder.head.transform.dense.weight"], source["teacher.model.mlm_head.transform.dense.weight"])
    assert report.dropped["model.itm_head.weight"] == "this task has no image-text matching head"
    assert "model.mlm_head.transform.dense.weight" not in report.dropped  # consumed by the decoder head
    assert not report.fresh


def test_nlvr_pairs_duplicate_each_fusion_layer():
    source = pretrain_state()
    target = Holder(ALBEF(tiny_config(fusion_streams=2, projections=False, itm_head=False, mlm_head=False, classifier_classes=2)))
    state, report = adapt_state_dict(source, target.state_dict(), {"cls_head.": "new classifier"})
    for j in (0, 1):
        assert torch.equal(state[f"model.fusion_encoder.layer.{j}.crossattention.self.query.weight"], source["model.fusion_encoder.layer.0.crossattention.self.query.weight"])
    assert report.fresh["model.cls_head.0.weight"] == "new classifier"
    assert report.fresh["teacher.model.cls_head.2.bias"] == "new classifier"


def test_position_embeddings_are_resampled_for_online_and_momentum_encoders():
    source = pretrain_state()
    bigger = tiny_config(vision=VisionConfig(img_size=48, patch_size=16, width=32, depth=1, heads=2))
    target = Holder(ALBEF(bigger))
    state, report = adapt_state_dict(source, target.state_dict())
    assert state["model.visual_encoder.pos_embed"].shape == (1, 10, 32)
    assert set(report.resized) == {"model.visual_encoder.pos_embed", "teacher.model.visual_encoder.pos_embed"}
    target.load_state_dict(state)


def test_missing_momentum_weights_are_copied_from_online_weights():
    source = {k: v for k, v in pretrain_state().items() if not k.startswith("teacher.")}
    target = Holder(ALBEF(tiny_config()))
    state, report = adapt_state_dict(source, target.state_dict(), {"queue.": "x"})
    assert torch.equal(state["teacher.model.vision_proj.weight"], source["model.vision_proj.weight"])
    assert "teacher.model.vision_proj.weight" in report.from_online


def test_unexplained_keys_and_shape_mismatches_are_errors():
    source = pretrain_state()
    target = Holder(ALBEF(tiny_config(classifier_classes=3)))
    with pytest.raises(CheckpointError, match="cls_head"):
        adapt_state_dict(source, target.state_dict())
    with pytest.raises(CheckpointError, match="no counterpart"):
        adapt_state_dict({**source, "model.mystery.weight": torch.zeros(1)}, Holder(ALBEF(tiny_config())).state_dict())
    wide = Holder(ALBEF(tiny_config(embed_dim=8)))
    with pytest.raises(CheckpointError, match="vision_proj.weight has shape"):
        adapt_state_dict(source, wide.state_dict())


def test_nlvr_pairs_come_from_layer_j_over_two_with_several_fusion_layers():
    from albef_struct.models import TextConfig

    text = TextConfig(hidden=32, layers=3, fusion_layer=1, heads=2, intermediate=64, max_position=40)
    torch.manual_seed(1)
    source = Holder(ALBEF(tiny_config(text=text))).state_dict()
    target = Holder(ALBEF(tiny_config(text=text, fusion_streams=2, projections=False, itm_head=False, mlm_head=False, classifier_classes=2)))
    state, _ = adapt_state_dict(source, target.state_dict(), {"cls_head.": "new classifier"})
    for owner in ("model.", "teacher.model."):
        for j in range(4):
            for name in ("attention.self.query.weight", "crossattention.self.key.weight"):
                assert torch.equal(state[f"{owner}fusion_encoder.layer.{j}.{name}"], source[f"{owner}fusion_encoder.layer.{j // 2}.{name}"])


def test_a_feature_separation_pretraining_fine_tunes_into_every_task(tmp_path):
    """The private heads of a feature-separation pretraining are dropped with their reason, not refused."""
    from albef_struct.checkpoint.weights import TaskWeights
    from albef_struct.lit.checkpoints import save_lightning_checkpoint
    from albef_struct.tasks.nlvr import TextAssignmentModule
    from albef_struct.tasks.retrieval import RetrievalModule
    from albef_struct.tasks.ve import VEModule

    path = tmp_path / "fs_pretrain.ckpt"
    save_lightning_checkpoint(TaskWeights.for_task("pretrain", tiny_config(private_heads=True), queue_size=16),
                              "pretrain", path)
    for module_class in (VEModule, TextAssignmentModule):
        report = module_class(arch=tiny_config(), init_from=str(path)).init_report
        private = {k: why for k, why in report.dropped.items() if "private_proj" in k}
        assert private and set(private.values()) == {"this model has no private (feature-separation) heads"}
    kept = RetrievalModule(arch=tiny_config(private_heads=True), init_from=str(path), queue_size=16).init_report
    assert "model.vision_private_proj.weight" in kept.loaded
