"""Official ALBEF checkpoints: layout detection, import reports vs ALBEF's own, round trips, bad files."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from albef_struct.checkpoint.arch import infer_arch
from albef_struct.checkpoint.errors import CheckpointError
from albef_struct.checkpoint.export import export_albef
from albef_struct.checkpoint.fit import adapt_state_dict
from albef_struct.checkpoint.importer import import_albef
from albef_struct.checkpoint.keymap import convert_albef_state_dict
from albef_struct.checkpoint.safetensors_io import save_safetensors
from albef_struct.checkpoint.source import read_source
from albef_struct.checkpoint.weights import TaskWeights, task_arch
from albef_struct.models import ALBEFConfig, TextConfig
from albef_struct.tasks.registry import TASKS
from tests.conftest import KEYS_FILE, PARITY_DIR, load_fixture, parity_config, tiny_config

PRETRAIN = PARITY_DIR / "pretrain_checkpoint.pth"
CONFIG = json.loads((PARITY_DIR / "config.json").read_text())
QUEUE = CONFIG["architecture"]["queue"]


def task_config() -> ALBEFConfig:
    """Fixture A's sizes at the task resolution (every task file of the fixture is at it)."""
    config = parity_config()
    return replace(config, vision=replace(config.vision, img_size=CONFIG["architecture"]["task_res"]))


# --- layout detection ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, layout, wrapped, fusion, momentum, queues, decoder",
    [
        ("pretrain_checkpoint.pth", "pretrain", True, 6, True, True, 0),
        ("vqa_checkpoint.pth", "finetuned", False, 6, True, False, 6),
        ("ve_checkpoint.pth", "finetuned", False, 6, True, False, 0),
        ("nlvr_ta_checkpoint.pth", "nlvr", True, 12, True, False, 0),
        ("nlvr_checkpoint.pth", "nlvr", False, 12, True, False, 0),
    ],
)
def test_layout_is_detected(name, layout, wrapped, fusion, momentum, queues, decoder):
    found = read_source(PARITY_DIR / name).layout
    assert (found.name, found.wrapped, found.text_layers, found.fusion_layers) == (layout, wrapped, 6, fusion)
    assert (found.momentum, found.queues, found.decoder_layers) == (momentum, queues, decoder)
    assert found.fusion_streams == (2 if layout == "nlvr" else 1)


def test_albef_base_architecture_is_inferred_from_the_official_key_shapes():
    entries = json.loads(KEYS_FILE.read_text())["keys"]
    state = {e["key"]: torch.empty(e["shape"], device="meta") for e in entries}
    source = read_source({"model": state})
    assert source.layout.name == "pretrain" and source.queue_size == 65536
    arch = infer_arch(source)
    base = ALBEFConfig()
    assert arch.vision == base.vision and arch.text == base.text and arch.embed_dim == base.embed_dim


# --- import reports against ALBEF's own load_state_dict(strict=False) ----------------------------------
REPORT_CASES = {  # task: the file ALBEF's task script loads
    "retrieval": "pretrain_checkpoint.pth",
    "ve": "pretrain_checkpoint.pth",
    "vqa": "pretrain_checkpoint.pth",
    "nlvr": "nlvr_ta_checkpoint.pth",
}
# What ALBEF's models hold and so never report, but this project drops with a reason.
NOT_REPORTED_BY_ALBEF = ("embeddings.position_ids", "cls.predictions.decoder.bias")


@pytest.mark.parametrize("task", sorted(REPORT_CASES))
def test_report_explains_every_key_albef_reported(task):
    _, report = import_albef(PARITY_DIR / REPORT_CASES[task], task, arch=task_config())
    albef = CONFIG["tasks"][task]
    # ALBEF's missing keys are exactly what starts fresh or is copied from the online weights
    assert set(report.initialised) == set(albef["missing"])
    # ALBEF's unexpected keys are all dropped, with a reason; anything else we drop, ALBEF's model absorbs
    assert set(albef["unexpected"]) <= set(report.dropped)
    assert all(report.dropped[k] for k in albef["unexpected"])
    extra = set(report.dropped) - set(albef["unexpected"])
    assert all(k.endswith(NOT_REPORTED_BY_ALBEF) for k in extra), extra


def test_retrieval_report_from_pretraining(capsys):
    _, report = import_albef(PRETRAIN, "retrieval", arch=task_config())
    assert report.layout.name == "pretrain" and report.task == "retrieval"
    assert report.fresh == {"queue.idx": report.fresh["queue.idx"]} and "image-id queue" in report.fresh["queue.idx"]
    mlm = {k: why for k, why in report.dropped.items() if ".cls.predictions." in k and "alias" not in why}
    assert len(mlm) == 12 and set(mlm.values()) == {"the MLM head is only used in pretraining"}
    assert set(report.shapes) == {"model.visual_encoder.pos_embed", "teacher.model.visual_encoder.pos_embed"}
    assert report.shapes["model.visual_encoder.pos_embed"] == ((1, 17, 64), (1, 37, 64))
    text = report.format()
    for part in ("layout: pretrain", "resized", "idx_queue", "the MLM head is only used in pretraining (12)"):
        assert part in text


def test_nlvr_report_makes_momentum_copies_from_online_weights():
    state, report = import_albef(PARITY_DIR / "nlvr_ta_checkpoint.pth", "nlvr", arch=task_config())
    copies = {report.name(k) for k in report.adapt.from_online}
    assert copies and all(k.startswith("visual_encoder_m.") for k in copies)
    assert torch.equal(state["teacher.model.visual_encoder.pos_embed"], state["model.visual_encoder.pos_embed"])
    # the file's momentum text encoder is used as it is (ALBEF loads it too)
    file = load_fixture("nlvr_ta_checkpoint.pth")["model"]
    assert torch.equal(state["teacher.model.fusion_encoder.layer.3.attention.self.query.weight"],
                       file["text_encoder_m.encoder.layer.9.attention.self.query.weight"])


# --- fine-tuned official files into the task modules ---------------------------------------------------
def _assert_all_equal(ours: dict[str, torch.Tensor], name: str) -> None:
    """Every tensor of ALBEF's fine-tuned file equals the loaded module's, and nothing else exists."""
    theirs, _ = convert_albef_state_dict(load_fixture(name), task_config().text.fusion_layer)
    assert set(ours) == set(theirs)
    for key, value in theirs.items():
        assert torch.equal(ours[key], value), key


def test_vqa_checkpoint_loads_into_the_vqa_module_whole():
    from albef_struct.tasks.vqa import VQAModule

    module = VQAModule(arch=task_config(), init_from=str(PARITY_DIR / "vqa_checkpoint.pth"))
    assert not module.init_report.fresh and not module.init_report.dropped
    _assert_all_equal(module.state_dict(), "vqa_checkpoint.pth")
    assert module.state_dict()["model.answer_decoder.layer.5.crossattention.self.key.weight"].shape == (64, 64)


def test_ve_checkpoint_loads_into_the_ve_module_whole():
    from albef_struct.tasks.ve import VEModule

    module = VEModule(arch=task_config(), init_from=str(PARITY_DIR / "ve_checkpoint.pth"))
    assert not module.init_report.fresh  # the file has the classifier: nothing starts fresh
    _assert_all_equal(module.state_dict(), "ve_checkpoint.pth")


def test_nlvr_checkpoint_loads_into_the_nlvr_module_whole():
    from albef_struct.tasks.nlvr import NLVRModule

    module = NLVRModule(arch=task_config(), init_from=str(PARITY_DIR / "nlvr_checkpoint.pth"))
    assert not module.init_report.fresh
    _assert_all_equal(module.state_dict(), "nlvr_checkpoint.pth")


# --- task weights: the same keys as the task modules ----------------------------------------------------
def _module(task: str, arch: ALBEFConfig, **kwargs):
    spec = TASKS[task]
    return spec.module(arch=arch, **({"queue_size": 16} if spec.queue else {}), **kwargs)


@pytest.mark.parametrize("task", sorted(TASKS))
def test_task_weights_have_the_task_modules_keys(task):
    arch = tiny_config(text=TextConfig(hidden=32, layers=3, fusion_layer=1, heads=2, intermediate=64, max_position=40))
    weights = TaskWeights.for_task(task, arch, queue_size=16)
    module = _module(task, arch)
    assert set(weights.state_dict()) == set(module.state_dict())
    assert weights.model.config == module.model.config


def test_teachers_leave_out_the_itm_head_and_temperature_as_albef():
    arch = tiny_config(text=TextConfig(hidden=32, layers=3, fusion_layer=1, heads=2, intermediate=64, max_position=40))
    for state in (TaskWeights.for_task("retrieval", arch, queue_size=16).state_dict(),
                  _module("retrieval", arch).state_dict()):
        assert "model.itm_head.weight" in state and "model.temp" in state
        assert "teacher.model.vision_proj.weight" in state
        assert not any(k.startswith(("teacher.model.itm_head.", "teacher.model.temp")) for k in state)


# --- init_from: every task accepts an official file directly -------------------------------------------
INIT_FILES = {
    "pretrain": "pretrain_checkpoint.pth",
    "retrieval": "pretrain_checkpoint.pth",
    "vqa": "pretrain_checkpoint.pth",
    "ve": "pretrain_checkpoint.pth",
    "nlvr": "nlvr_ta_checkpoint.pth",
    "nlvr_pretrain": "pretrain_checkpoint.pth",
}


@pytest.mark.parametrize("task", sorted(INIT_FILES))
def test_every_task_module_initialises_from_an_official_file(task):
    arch = parity_config() if task in ("pretrain", "nlvr_pretrain") else task_config()
    extra = {"queue_size": QUEUE} if TASKS[task].queue else {}
    module = TASKS[task].module(arch=arch, init_from=str(PARITY_DIR / INIT_FILES[task]), **extra)
    expected, _ = import_albef(PARITY_DIR / INIT_FILES[task], task, arch=arch)
    ours = module.state_dict()
    fresh = set(module.init_report.fresh)
    for key, value in expected.items():
        if key not in fresh:
            assert torch.equal(ours[key], value), key


def test_every_task_config_takes_init_from():
    import yaml

    from tests.conftest import REPO

    modules = {spec.class_path for spec in TASKS.values()}
    for path in sorted((REPO / "configs").glob("*.yaml")):
        model = yaml.safe_load(path.read_text()).get("model", {})
        if model.get("class_path") in modules:
            assert "init_from" in model["init_args"], path


# --- round trips ------------------------------------------------------------------------------------------
def test_pretraining_round_trip_is_bit_exact():
    original = load_fixture("pretrain_checkpoint.pth")["model"]
    first, _ = import_albef(PRETRAIN, "pretrain", arch=parity_config())
    exported = export_albef(first, "pretrain")
    assert set(exported) == set(original)
    for key, value in original.items():
        assert exported[key].dtype == value.dtype and torch.equal(exported[key], value), key
    # the MLM decoder stays tied to the word embeddings, as in ALBEF's file
    assert (exported["text_encoder.cls.predictions.decoder.weight"].data_ptr()
            == exported["text_encoder.bert.embeddings.word_embeddings.weight"].data_ptr())
    second, report = import_albef({"model": exported}, "pretrain", arch=parity_config())
    assert report.layout.name == "pretrain"
    assert set(second) == set(first)
    for key, value in first.items():
        assert torch.equal(second[key], value), key


@pytest.mark.parametrize("task, name", [("ve", "ve_checkpoint.pth"), ("vqa", "vqa_checkpoint.pth"),
                                        ("nlvr", "nlvr_checkpoint.pth")])
def test_fine_tuned_round_trip_gives_albefs_bare_layout(task, name):
    original = load_fixture(name)
    state, report = import_albef(PARITY_DIR / name, task, arch=task_config())
    assert not report.fresh
    exported = export_albef(state, task)
    assert set(exported) == set(original)
    for key, value in original.items():
        assert torch.equal(exported[key], value), key
    without = export_albef(state, task, include_momentum=False)
    assert not any("_m." in k for k in without) and set(without) < set(exported)


def test_export_refuses_weights_albef_has_no_place_for():
    weights = TaskWeights.for_task("pretrain", tiny_config(private_heads=True), queue_size=16)
    with pytest.raises(CheckpointError, match="private_proj"):
        export_albef(weights.state_dict(), "pretrain")
    exported = export_albef(weights.state_dict(), "pretrain", strict=False)
    assert not any("private" in k for k in exported) and "idx_queue" not in exported


def test_safetensors_keep_ties_and_load_as_init_from(tmp_path):
    from albef_struct.tasks.ve import VEModule

    weights = TaskWeights.for_task("ve", task_config())
    state, _ = import_albef(PARITY_DIR / "ve_checkpoint.pth", weights)
    weights.load_state_dict(state)
    path = tmp_path / "ve.safetensors"
    save_safetensors(weights, path, "ve")
    source = read_source(path)
    assert source.layout.name == "albef_struct"
    for key, value in weights.state_dict().items():
        assert torch.equal(source.state[key], value), key
    module = VEModule(arch=task_config(), init_from=str(path))
    assert not module.init_report.fresh
    _assert_all_equal(module.state_dict(), "ve_checkpoint.pth")


# --- NLVR2 pairs: pretrained fusion layer k seeds layers 2k and 2k+1 -------------------------------------
def test_fusion_pairs_come_from_layer_k_over_2_not_the_same_number():
    text = TextConfig(hidden=32, layers=3, fusion_layer=1, heads=2, intermediate=64, max_position=40)
    source = TaskWeights.for_task("pretrain", tiny_config(text=text), queue_size=16).state_dict()
    target = TaskWeights.for_task("nlvr", tiny_config(text=text)).state_dict()
    state, _ = adapt_state_dict(source, target, TASKS["nlvr"].fresh_ok)
    query = "fusion_encoder.layer.{}.attention.self.query.weight"
    for owner in ("model.", "teacher.model."):
        for layer in range(4):
            assert torch.equal(state[owner + query.format(layer)], source[owner + query.format(layer // 2)])


# --- bad files ----------------------------------------------------------------------------------------------
def test_truncated_file(tmp_path):
    data = PRETRAIN.read_bytes()
    path = tmp_path / "truncated.pth"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        import_albef(path, "retrieval", arch=task_config())
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        read_source(tmp_path / "empty.pth")
    with pytest.raises(CheckpointError, match="does not exist"):
        read_source(tmp_path / "missing.pth")


class _OptimizerConfig:  # stands for the pickled objects some training scripts save next to the weights
    lr = 1e-4


def test_file_needing_unsafe_unpickling_is_refused_with_the_fix(tmp_path):
    path = tmp_path / "pickled.pth"
    torch.save({"model": load_fixture("ve_checkpoint.pth"), "config": _OptimizerConfig()}, path)
    with pytest.raises(CheckpointError) as err:
        read_source(path)
    message = str(err.value)
    assert "_OptimizerConfig" in message and "weights_only=True" in message and "weights_only=False" in message


@pytest.mark.parametrize(
    "state, match",
    [
        ({"bert.embeddings.word_embeddings.weight": torch.zeros(3, 2),
          "bert.encoder.layer.0.attention.self.query.weight": torch.zeros(2, 2)}, "BERT"),
        ({"cls_token": torch.zeros(1, 1, 2), "blocks.0.attn.qkv.weight": torch.zeros(6, 2)}, "ViT"),
        ({"foo": torch.zeros(1), "bar": torch.ones(2)}, "not an ALBEF checkpoint"),
        ({"model": {"visual_encoder.cls_token": torch.zeros(1), "text_encoder.x": "text"}}, "not a tensor"),
    ],
)
def test_files_of_other_models_are_refused(tmp_path, state, match):
    path = tmp_path / "other.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=match):
        import_albef(path, "retrieval", arch=task_config())


def test_wrong_shapes_name_the_key_and_both_shapes():
    with pytest.raises(CheckpointError, match=r"^vision_proj\.weight has shape \(32, 64\) in the checkpoint but the "
                                              r"model's model\.vision_proj\.weight expects \(16, 64\)"):
        import_albef(PRETRAIN, "retrieval", arch=replace(task_config(), embed_dim=16))
    with pytest.raises(CheckpointError, match="queue_size: 64"):
        import_albef(PRETRAIN, TaskWeights.for_task("retrieval", task_config(), queue_size=32))


def test_fusion_layer_and_depth_mismatches_are_explained():
    arch = task_config()
    other_fusion = replace(arch, text=replace(arch.text, fusion_layer=4, layers=10))
    with pytest.raises(CheckpointError, match="first cross-attention layer is 6.*fusion_layer is 4"):
        import_albef(PRETRAIN, "retrieval", arch=other_fusion)
    deeper = replace(arch, text=replace(arch.text, layers=14))
    with pytest.raises(CheckpointError, match="6 fusion layers per stream, the model 8"):
        import_albef(PRETRAIN, "retrieval", arch=deeper)
    with pytest.raises(CheckpointError, match="paired fusion layers"):
        import_albef(PARITY_DIR / "nlvr_checkpoint.pth", "ve", arch=arch)


def test_task_arch_sets_the_heads_each_task_needs():
    arch = parity_config()
    assert task_arch("vqa", arch).answer_decoder_layers == 6
    assert (task_arch("nlvr", arch).fusion_streams, task_arch("nlvr", arch).classifier_classes) == (2, 2)
    assert task_arch("ve", arch).classifier_classes == 3 and not task_arch("ve", arch).projections
    assert task_arch("grounding", arch).itm_head and task_arch("grounding", arch).projections  # the retrieval model
    with pytest.raises(CheckpointError, match="unknown task"):
        task_arch("captioning", arch)
