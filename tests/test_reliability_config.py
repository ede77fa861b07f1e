"""Bad configuration fails before training starts, with one message that names the keys and the fix.

Everything goes through ``albef-struct`` (``albef_struct.cli.main``) in process with a
tiny model on generated demo data. Unknown keys and wrong types are refused by the
parser (exit code 2, before anything is built); a structure loss that needs private
heads is refused when the model is built; settings that cannot work together are
found by the ``ConfigValidator`` callback the CLI adds, in ``setup``, before the
first batch (``FailIfTrained`` below would fail the test otherwise).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pytorch_lightning.callbacks import Callback

from albef_struct.cli import main
from albef_struct.lit.validation import ConfigError
from albef_struct.data_prep.demo_data import generate
from tests.reliability_helpers import merge, one_thread, tiny_config, write_config  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


class FailIfTrained(Callback):
    """Fails the test if a configuration error surfaced only after training started."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        raise AssertionError("a training step started: the configuration error was not caught before training")


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    generate(out, seed=0, image_size=32, n_train=64, n_val=8, n_test=8)
    return out


def config_file(tmp_path: Path, demo_dir: Path, **override) -> Path:
    config = tiny_config(tmp_path, demo_dir, **override)
    config["trainer"]["callbacks"] = [{"class_path": "tests.test_reliability_config.FailIfTrained"}]
    return write_config(tmp_path / "config.yaml", config)


@pytest.mark.parametrize(
    "override, named",
    [
        ({"data": {"init_args": {"batch_sise": 8}}}, "batch_sise"),
        ({"trainer": {"max_step": 3}}, "max_step"),
        ({"model": {"init_args": {"queue_size": "big"}}}, "queue_size"),
        ({"model": {"init_args": {"arch": {"vision": {"patch_size": "sixteen"}}}}}, "patch_size"),
        ({"data": {"init_args": {"hflip": "sometimes"}}}, "hflip"),
    ],
    ids=["unknown-data-key", "unknown-trainer-key", "queue_size-not-int", "nested-arch-type", "bool-type"],
)
def test_unknown_keys_and_wrong_types_are_refused_by_the_parser(tmp_path, demo_dir, capsys, override, named):
    with pytest.raises(SystemExit) as info:
        main(["fit", "--config", str(config_file(tmp_path, demo_dir, **override))])
    assert info.value.code == 2
    assert named in capsys.readouterr().err
    assert not (tmp_path / "lightning_logs").exists()  # nothing ran


def test_structure_loss_needing_private_heads_on_a_model_without_them(tmp_path, demo_dir):
    override = {"model": {"init_args": {"structure": [{"name": "feature_separation", "weight": 0.1}]}}}
    with pytest.raises(ValueError, match=r"^the structure loss\(es\) \['feature_separation'\] need modality-private "
                                         r"features: set model\.init_args\.arch\.private_heads: true$"):
        main(["fit", "--config", str(config_file(tmp_path, demo_dir, **override))])  # not inside jsonargparse's dump


def with_val(demo_dir: Path, **override) -> dict:
    """``override`` plus the 8-image retrieval validation set, evaluated whole."""
    return merge({"data": {"init_args": {"val_file": str(demo_dir / "retrieval_val.json"), "eval_batch_size": 4}},
                  "trainer": {"limit_val_batches": 1.0}}, override)


@pytest.mark.parametrize(
    "override, message",
    [
        ({"model": {"init_args": {"queue_size": 60}}},
         r"model\.init_args\.queue_size=60 is not a multiple of the global batch 8 \(data\.init_args\.batch_size 8 x "
         r"1 device\(s\) x 1 node\(s\)\).*\(e\.g\. 64\)"),
        ({"model": {"init_args": {"queue_size": 4}}}, r"queue_size=4 is smaller than the global batch 8"),
        ({"VAL": True, "model": {"init_args": {"k_test": 16}}},
         r"model\.init_args\.k_test=16 is larger than the validation gallery: 8 images and 40 texts.*"
         r"data\.init_args\.val_file.*at most 8"),
        ({"model": {"init_args": {"augmented_view": "second_view", "structure": [{"name": "brownian_bridge"}]}}},
         r"augmented_view is 'second_view' but the DataModule yields no second view: set data\.init_args\.second_view"),
        ({"data": {"init_args": {"max_tokens": 100}}},
         r"data\.init_args\.max_tokens=100 exceeds model\.init_args\.arch\.text\.max_position=64"),
        ({"model": {"init_args": {"arch": {"text": {"vocab_size": 1000}}}}},
         r"the tokenizer at \S+ has 30522 tokens but model\.init_args\.arch\.text\.vocab_size is 1000: ids from 1000 "
         r"up would index past the word embeddings; set data\.init_args\.tokenizer_path"),
    ],
    ids=["queue-not-multiple", "queue-smaller-than-batch", "k_test-over-gallery", "second-view-missing",
         "text-length", "vocabulary-larger-than-embeddings"],
)
def test_incompatible_settings_fail_in_setup_before_the_first_step(tmp_path, demo_dir, override, message):
    override = dict(override)
    if override.pop("VAL", False):
        override = with_val(demo_dir, **override)
    with pytest.raises(ConfigError, match=r"found before fit started") as info:
        main(["fit", "--config", str(config_file(tmp_path, demo_dir, **override))])
    assert re.search(message, str(info.value), flags=re.S), str(info.value)
    assert "(1 problem(s)" in str(info.value)


def test_every_problem_is_listed_in_one_message(tmp_path, demo_dir):
    override = with_val(demo_dir, model={"init_args": {"queue_size": 60, "k_test": 16}},
                        data={"init_args": {"max_tokens": 100}})
    with pytest.raises(ConfigError) as info:
        main(["fit", "--config", str(config_file(tmp_path, demo_dir, **override))])
    message = str(info.value)
    assert "(3 problem(s), found before fit started)" in message
    assert "queue_size=60" in message and "k_test=16" in message and "max_tokens=100" in message


def test_checkpoint_monitor_without_validation(tmp_path, demo_dir):
    config = tiny_config(tmp_path, demo_dir)
    config["trainer"]["callbacks"] = [
        {"class_path": "tests.test_reliability_config.FailIfTrained"},
        {"class_path": "pytorch_lightning.callbacks.ModelCheckpoint", "init_args": {"monitor": "val/r_mean"}},
    ]
    with pytest.raises(ConfigError, match=r"a ModelCheckpoint monitors val/r_mean but this run has no validation"):
        main(["fit", "--config", str(write_config(tmp_path / "config.yaml", config))])


def test_test_stage_checks_the_test_gallery(tmp_path, demo_dir):
    override = {"data": {"init_args": {"test_file": str(demo_dir / "retrieval_test.json"), "eval_batch_size": 4}},
                "model": {"init_args": {"k_test": 9}}}
    with pytest.raises(ConfigError, match=r"(?s)found before test started.*k_test=9 is larger than the test gallery: 8 images"):
        main(["test", "--config", str(config_file(tmp_path, demo_dir, **override))])
