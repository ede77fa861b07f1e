"""The command prints the library's INFO records: e.g. what init_from loaded from an official file."""

from __future__ import annotations

import logging

import pytest
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from albef_struct.cli import main
from albef_struct.console_logging import configure_command_logging
from albef_struct.tasks.registry import TASKS
from tests.conftest import PARITY_DIR, parity_config


def test_init_from_an_official_file_prints_its_import_report(capsys) -> None:
    configure_command_logging()
    TASKS["ve"].module(arch=parity_config(), init_from=str(PARITY_DIR / "pretrain_checkpoint.pth"))
    err = capsys.readouterr().err
    assert f"ALBEF checkpoint import: {PARITY_DIR / 'pretrain_checkpoint.pth'}" in err
    assert "574 tensors loaded" in err
    # the VE classifier is not in a pretraining file: it starts fresh, grouped under its reason
    assert "new 3-way entailment classifier (ALBEF initialises it fresh) (8): cls_head" in err
    assert "this task keeps no feature queue (3): image_queue, queue_ptr, text_queue" in err


def test_the_command_sets_it_up_once(capsys) -> None:
    logger = logging.getLogger("albef_struct")
    for handler in [h for h in logger.handlers if getattr(h, "_albef_struct_command_handler", False)]:
        logger.removeHandler(handler)
    with pytest.raises(SystemExit):
        main(["convert", "--help"])
    mine = [h for h in logger.handlers if getattr(h, "_albef_struct_command_handler", False)]
    assert len(mine) == 1
    assert configure_command_logging() is mine[0]  # a second call adds no second handler


def test_only_rank_zero_prints(capsys, monkeypatch) -> None:
    configure_command_logging()
    logging.getLogger("albef_struct.some.module").info("a record for the user")
    assert "a record for the user" in capsys.readouterr().err
    monkeypatch.setattr(rank_zero_only, "rank", 1, raising=False)
    logging.getLogger("albef_struct.some.module").info("a record from rank 1")
    assert "rank 1" not in capsys.readouterr().err
