"""The CLI shows the project's own errors as one message (no traceback); --debug brings the traceback back."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from albef_struct.cli import main
from albef_struct.data.bad_records import BadRecordError
from albef_struct.errors import DEBUG_ENV, user_message
from tests.test_cli import write_config

REPO = Path(__file__).resolve().parents[1]


def config_with_bad_record(tmp_path: Path, demo_dir: Path) -> tuple[Path, Path]:
    records = json.loads((demo_dir / "pretrain.json").read_text())[:16]
    records[3]["image"] = "images/train/no_such_image.jpg"
    bad = tmp_path / "bad_pretrain.json"
    bad.write_text(json.dumps(records))
    config = write_config(tmp_path, demo_dir)
    data = yaml.safe_load(config.read_text())
    data["data"]["init_args"]["train_files"] = [str(bad)]
    config.write_text(yaml.safe_dump(data))
    return config, bad


def test_a_bad_record_is_one_message_with_status_1(tmp_path, demo_dir, capsys, monkeypatch):
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    config, bad = config_with_bad_record(tmp_path, demo_dir)
    assert main(["fit", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    message = [line for line in err.splitlines() if line.startswith("BadRecordError:")]
    assert len(message) == 1 and str(bad) in message[0] and "record 3" in message[0]
    assert "--debug" in err and DEBUG_ENV in err


def test_an_unknown_encoder_to_checkpoint_is_one_message_naming_the_key(tmp_path, demo_dir, capsys, monkeypatch):
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    config = write_config(tmp_path, demo_dir)
    assert main(["fit", "--config", str(config), "--model.init_args.arch.grad_checkpointing", "[vit]"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    message = [line for line in err.splitlines() if line.startswith("ArchConfigError:")]
    assert len(message) == 1 and "arch.grad_checkpointing" in message[0] and "'vit'" in message[0] and "[fusion]" in message[0]


def test_debug_flag_and_variable_keep_the_traceback(tmp_path, demo_dir, monkeypatch):
    config, _ = config_with_bad_record(tmp_path, demo_dir)
    with pytest.raises(BadRecordError):
        main(["fit", "--config", str(config), "--debug"])
    monkeypatch.setenv(DEBUG_ENV, "1")
    with pytest.raises(BadRecordError):
        main(["fit", "--config", str(config)])


def test_other_exceptions_keep_their_traceback(monkeypatch):
    def broken(args, pass_args):
        raise RuntimeError("a bug, not a user error")

    monkeypatch.setattr("albef_struct.cli._dispatch", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["fit"])


def test_an_error_from_a_dataloader_worker_is_unwrapped():
    worker = RuntimeError(
        "Caught BadRecordError in DataLoader worker process 1.\nOriginal Traceback (most recent call last):\n"
        '  File "x.py", line 1, in f\nalbef_struct.data.bad_records.BadRecordError: a.json, record 7: image is empty'
    )
    assert user_message(worker) == "BadRecordError: a.json, record 7: image is empty"
    assert user_message(RuntimeError("Caught KeyError in DataLoader worker process 0.")) is None
    assert user_message(ValueError("plain")) is None


def test_the_console_script_exits_1_without_traceback(tmp_path, demo_dir):
    config, _ = config_with_bad_record(tmp_path, demo_dir)
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-m", "albef_struct.cli", "fit", "--config", str(config)], cwd=REPO,
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "BadRecordError:" in result.stderr


def test_strategy_names_fsdp_and_bare_class_paths_become_strategies():
    from pytorch_lightning.strategies import DDPStrategy

    from albef_struct.cli import strategy_from_name
    from albef_struct.lit.sharding import FullyShardedStrategy
    from albef_struct.lit.validation import ConfigError

    assert isinstance(strategy_from_name("fsdp"), FullyShardedStrategy)  # not Lightning's FSDP1, which refuses CPUs
    assert isinstance(strategy_from_name("pytorch_lightning.strategies.DDPStrategy"), DDPStrategy)
    assert strategy_from_name("ddp") == "ddp"  # Lightning's own names pass through
    with pytest.raises(ConfigError, match=r"'albef_struct.lit.sharding.Nope': no such class.*ddp or fsdp"):
        strategy_from_name("albef_struct.lit.sharding.Nope")
    with pytest.raises(ConfigError, match=r"'torch.nn.Linear' is not a pytorch_lightning Strategy"):
        strategy_from_name("torch.nn.Linear")
