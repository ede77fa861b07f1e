"""The ``albef-struct`` command: LightningCLI (fit/validate/test/predict) plus extra subcommands."""

from __future__ import annotations

import copy
import importlib
import inspect
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any, Optional

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback
from jsonargparse import Namespace
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI

from albef_struct.console_logging import configure_command_logging
from albef_struct.errors import DEBUG_FLAG, debug_requested, hint, user_message
from albef_struct.tasks.registry import LEGACY_PACKAGE, TASKS, current_class_path, task_of_class_path

#: Callbacks (in albef_struct.lit.reliability) every run gets unless ``trainer.callbacks`` lists one of that class.
DEFAULT_CALLBACKS: tuple[str, ...] = ("ConfigValidator", "SkippedRecordsReport", "RNGStateCheckpoint", "RunFolderGuard")

# Subcommands that are not Trainer methods: name -> (module path, function taking argv).
EXTRA_COMMANDS: dict[str, tuple[str, str, str]] = {
    "analyze": ("albef_struct.analysis", "main", "latent geometry, linear probes and a 2-D picture of embeddings"),
    "convert": ("albef_struct.convert", "main", "official ALBEF checkpoint -> this project's .ckpt + .safetensors"),
    "cache-images": ("albef_struct.data.image_cache", "main", "a folder of images -> a frozen image encoder's tokens"),
    "classify": ("albef_struct.inference.commands", "classify_main", "zero-shot (and k-shot probe) image classification"),
    "index": ("albef_struct.inference.commands", "index_main", "embed a folder of images for search"),
    "search": ("albef_struct.inference.commands", "search_main", "the indexed images that best match a text"),
    "explain": ("albef_struct.inference.explain", "explain_main", "Grad-CAM of an image-text match, as a PNG"),
}


#: jsonargparse's lines around a refused value that say nothing about which key or why
_PARSER_NOISE = ("Does not validate against any of the Union", "Subtypes:", "Errors:", "Given value type:",
                 "Given value:", "- Expected a <class 'NoneType'>")


class CompactErrorParser(LightningArgumentParser):
    """A refused configuration is reported in a few lines (the key and the reason), not after the usage
    text; options are never abbreviated (``--trainer.max_epoch`` is an error, not ``max_epochs``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str, ex: Exception | None = None):
        if not self.exit_on_error:
            return super().error(message, ex)
        lines = [line.strip() for line in message.splitlines() if line.strip()]
        reason = " ".join(line.removeprefix("- ") for line in lines if not line.startswith(_PARSER_NOISE))
        linked = re.search(r"Call to compute_fn of link '[^']*' with args .* failed: (.*)", reason, re.S)
        if linked:  # the link's own message, without the whole configuration it was called with
            reason = linked.group(1)
        moved = re.search(rf"class_path '({re.escape(LEGACY_PACKAGE)}[\w.]+)'", reason)
        if moved:  # a config written before the task modules moved into albef_struct
            reason += f"; the task modules moved into the package: write {current_class_path(moved.group(1))}"
        prog = self.prog.replace(" [options]", "")
        sys.stderr.write(f"error: {reason}\n(accepted keys: {prog} --help; the full configuration: --print_config)\n")
        sys.exit(2)

    def parse_object(self, obj: Namespace | dict[str, Any], *args: Any, **kwargs: Any) -> Namespace:
        """Parse a configuration object (Lightning passes ``--ckpt_path``'s hyper-parameters here).

        Checkpoints written before the task modules moved into ``albef_struct`` name
        their class ``tasks.<module>.<Class>``; such class paths are read as the current ones.
        """
        return super().parse_object(with_current_class_paths(obj), *args, **kwargs)


def with_current_class_paths(config: Any) -> Any:
    """``config`` (plain dicts and lists) with every ``class_path`` value brought to its current path."""
    if isinstance(config, dict):
        return {key: current_class_path(value) if key == "class_path" and isinstance(value, str)
                else with_current_class_paths(value) for key, value in config.items()}
    if isinstance(config, list):
        return [with_current_class_paths(value) for value in config]
    return config


def model_image_size(model: Namespace) -> int:
    """The image size the configured model takes: ``arch.vision.img_size``, else its task's default."""
    init_args = model.get("init_args") or Namespace()
    arch = init_args.get("arch")
    if isinstance(arch, Namespace) and "init_args" in arch:  # a dataclass given as class_path + init_args
        arch = arch.init_args
    size = arch.get("vision.img_size") if isinstance(arch, Namespace) else None
    if size is not None:
        return int(size)
    task = task_of_class_path(model.get("class_path") or "")
    if task is None:
        raise ValueError(f"model {model.get('class_path')} has no model.init_args.arch.vision.img_size and is not a "
                         "registered task: set the image size there (the DataModule's image_res follows it)")
    return TASKS[task].image_res


def linked_image_res(model: Namespace, data: Namespace) -> int:
    """``data.init_args.image_res`` follows the model's image size; a different value set there is refused.

    (A value equal to the DataModule's own default cannot be told from an unset one, so it follows too.)
    """
    size = model_image_size(model)
    given = (data.get("init_args") or Namespace()).get("image_res")
    if given is not None and given != size and given != _default_image_res(data.get("class_path")):
        raise ValueError(
            f"data.init_args.image_res={given} differs from the model's image size {size}: the DataModule takes the "
            "model's (model.init_args.arch.vision.img_size); drop image_res from the data section and set the size there")
    return size


def _default_image_res(class_path: str | None) -> Any:
    import importlib
    import inspect

    if not class_path:
        return None
    module, _, name = class_path.rpartition(".")
    try:
        parameter = inspect.signature(getattr(importlib.import_module(module), name)).parameters.get("image_res")
    except (ImportError, AttributeError, ValueError, TypeError):
        return None
    return None if parameter is None else parameter.default


def strategy_from_name(name: str) -> Any:
    """``fsdp`` as :class:`~albef_struct.lit.sharding.FullyShardedStrategy` (Lightning's FSDP1 strategy refuses
    CPUs and would wrap ALBEF as one unit), a class path given alone as an instance of that class (jsonargparse
    passes it on as a plain string, which Lightning rejects), any other name unchanged for Lightning."""
    import importlib

    from pytorch_lightning.strategies import Strategy

    from albef_struct.lit.validation import ConfigError

    if name == "fsdp":
        from albef_struct.lit.sharding import FullyShardedStrategy

        return FullyShardedStrategy()
    module, _, attribute = name.rpartition(".")
    if not module:
        return name
    try:
        cls = getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"trainer.strategy {name!r}: no such class ({err}); name a Lightning strategy such as "
                          "ddp or fsdp, or a Strategy class path") from err
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        raise ConfigError(f"trainer.strategy {name!r} is not a pytorch_lightning Strategy class; name one such as "
                          "albef_struct.lit.sharding.FullyShardedStrategy, or a registered name such as ddp or fsdp")
    return cls()


class ALBEFCLI(LightningCLI):
    """LightningCLI with the model and data chosen by class path in YAML, and failure handling built in.

    Every run gets (see :mod:`albef_struct.lit.reliability`):

    * ``nonfinite`` (a ``NonFiniteGuard``, configured at the top level of the
      YAML like ``trainer``): ``nonfinite.on_nonfinite: error`` (default) stops at a
      NaN/Inf loss term or gradient naming the term and step, ``skip`` skips and
      counts such steps; also ``check_grads`` and ``restore_state``.
    * ``ConfigValidator``, ``SkippedRecordsReport`` and ``RNGStateCheckpoint``,
      unless ``trainer.callbacks`` lists one already.
    * ``AtomicCheckpointIO`` as the checkpoint plugin (atomic writes, weights-only
      loading), unless ``trainer.plugins`` sets another ``CheckpointIO``.
    * ``trainer.strategy: fsdp`` means :class:`~albef_struct.lit.sharding.FullyShardedStrategy`
      (FSDP2, one unit per transformer block, CPU or GPU), not Lightning's FSDP1 ``FSDPStrategy``.
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        from albef_struct.lit.reliability import NonFiniteGuard

        parser.add_lightning_class_args(NonFiniteGuard, "nonfinite")
        parser.add_argument(
            "--test_after_fit", type=Optional[str], default=None,
            help="fit only: when fitting ends, test in the same process on this checkpoint, 'best', 'last' or a "
                 "path (what `test --ckpt_path` would test, without starting a process and rebuilding the model)")
        # the image size is the model's: the DataModule's transforms follow it (said once, in the model)
        parser.link_arguments(("model", "data"), "data.init_args.image_res", compute_fn=linked_image_res,
                              apply_on="parse")

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Callback]) -> pl.Trainer:
        from albef_struct.lit import reliability

        configured = config.get("callbacks") or []
        configured = configured if isinstance(configured, list) else [configured]

        def listed(cls: type) -> bool:
            return any(isinstance(cb, cls) for cb in configured)

        guard = reliability.NonFiniteGuard
        # a NonFiniteGuard listed in trainer.callbacks replaces the `nonfinite` one
        extra = [cb for cb in callbacks if not (isinstance(cb, guard) and listed(guard))]
        defaults = [getattr(reliability, name) for name in DEFAULT_CALLBACKS]
        extra += [cls() for cls in defaults if not listed(cls)]
        if isinstance(config.get("strategy"), str):
            config = {**config, "strategy": strategy_from_name(config["strategy"])}
        trainer = super()._instantiate_trainer(config, extra)
        reliability.install_atomic_checkpoint_io(trainer)
        return trainer

    def instantiate_classes(self) -> None:
        """Build the classes; an error raised while building the model or data comes out as itself.

        jsonargparse would wrap it in "Does not validate against any of the Union
        subtypes", followed by the whole configuration.
        """
        try:
            super().instantiate_classes()
        except ValueError as err:
            error: BaseException = err
            while error.__cause__ is not None and str(error).startswith("Does not validate against any of the Union"):
                error = error.__cause__
            if error is err:
                raise
            raise error from None

    def _parse_ckpt_path(self) -> None:
        """Lightning reads ``--ckpt_path``'s hyper-parameters here; a file it cannot read gets this project's message.

        (``torch.load(weights_only=True)`` already refuses pickled code; the message
        then says what the file holds and what to do.) Lightning lets the checkpoint's
        hyper-parameters replace the configured ones; see :func:`keep_requested_settings`
        for the ones the command line or config asked for.
        """
        subcommand = self.config.get("subcommand")
        requested = copy.deepcopy(self.config[subcommand].get("model")) if subcommand else None
        try:
            super()._parse_ckpt_path()
        except Exception:
            from pathlib import Path

            from albef_struct.checkpoint.errors import CheckpointError
            from albef_struct.checkpoint.files import load_checkpoint_file
            from albef_struct.lit.reliability import earlier_checkpoints

            path = self.config[self.config.subcommand]["ckpt_path"]
            try:
                load_checkpoint_file(path)
            except CheckpointError as err:  # with the other checkpoints of that folder, as on every other path
                raise CheckpointError(f"{err}{earlier_checkpoints(Path(path))}") from err.__cause__
            raise
        if requested is not None:
            for line in keep_requested_settings(requested, self.config[subcommand]["model"]):
                print(line)

    def before_fit(self) -> None:
        """``--test_after_fit best|last`` needs a ``ModelCheckpoint`` that writes that file: refused before fitting."""
        ckpt = self.config["fit"].get("test_after_fit")
        if ckpt not in ("best", "last"):
            return
        from pytorch_lightning.callbacks import ModelCheckpoint

        from albef_struct.lit.validation import ConfigError

        writers = [cb for cb in self.trainer.callbacks if isinstance(cb, ModelCheckpoint)
                   and (cb.save_last if ckpt == "last" else cb.save_top_k != 0)]
        if not writers:
            setting = "save_last: true" if ckpt == "last" else "save_top_k other than 0"
            raise ConfigError(f"--test_after_fit {ckpt}: no ModelCheckpoint in trainer.callbacks writes a {ckpt} "
                              f"checkpoint; give one {setting}, or name a checkpoint file")

    def after_fit(self) -> None:
        """``--test_after_fit CKPT``: the test subcommand's run on that checkpoint, with this trainer and data."""
        ckpt = self.config["fit"].get("test_after_fit")
        if ckpt:
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=ckpt)

    def before_instantiate_classes(self) -> None:
        """With ``--ckpt_path`` the weights come from that checkpoint: skip ``init_from``,
        ``text_init`` and the image encoder's pretrained weights.

        Otherwise every resume, test or predict would first load (and need) the files
        the run was initialised from.
        """
        config = self.config[self.subcommand] if self.subcommand else self.config  # run=False: no subcommand
        if self.subcommand not in (None, "fit") and config.get("test_after_fit"):
            from albef_struct.lit.validation import ConfigError

            raise ConfigError(f"--test_after_fit belongs to fit, not {self.subcommand}: to test a checkpoint, "
                              "run `albef-struct test --ckpt_path PATH`")
        init_args = config["model"].get("init_args") if config.get("model") else None
        if not config.get("ckpt_path") or init_args is None:
            return
        if init_args.get("init_from"):
            print(f"--ckpt_path given: not loading init_from={init_args['init_from']}")
            init_args["init_from"] = None
        if init_args.get("text_init"):  # the same holds for the pretrained encoders' weights
            print(f"--ckpt_path given: not loading text_init={init_args['text_init']}")
            init_args["text_init"] = None
        vision = init_args.get("arch.vision")
        if vision is not None and (vision.get("pretrained") or vision.get("pretrained_file")):
            print("--ckpt_path given: not loading the image encoder's pretrained weights")
            vision["pretrained"], vision["pretrained_file"] = False, None


#: Model settings ``--ckpt_path`` decides: the architecture its weights fit, and the weight sources it replaces.
CHECKPOINT_SETTINGS = frozenset({"arch", "init_from", "text_init"})


def keep_requested_settings(requested: Namespace, merged: Namespace) -> list[str]:
    """After ``--ckpt_path``'s hyper-parameters replaced the configured model settings (Lightning's
    rule), put back each one the command line or a config asked for, i.e. set to other than the
    class's default (e.g. ``--model.init_args.k_test 16`` for a test), except ``arch`` (the weights
    loaded must fit, so the architecture is the checkpoint's) and the weight sources ``--ckpt_path``
    replaces (``init_from``, ``text_init``). A model of another class keeps the
    checkpoint's settings. Returns one line per setting put back, naming both values."""
    if not isinstance(requested, Namespace) or requested.get("class_path") != merged.get("class_path"):
        return []
    asked, used = requested.get("init_args"), merged.get("init_args")
    if not isinstance(asked, Namespace) or not isinstance(used, Namespace):
        return []
    defaults = init_defaults(str(merged["class_path"]))
    lines = []
    for key, value in vars(asked).items():
        if key in CHECKPOINT_SETTINGS or key not in defaults or value == defaults[key] or key not in used or value == used[key]:
            continue
        lines.append(f"--ckpt_path given: model.init_args.{key} stays {value!r} as configured "
                     f"(the checkpoint's run had {used[key]!r})")
        used[key] = value
    return lines


def init_defaults(class_path: str) -> dict[str, Any]:
    """The keyword defaults of ``class_path``'s constructor (empty when it cannot be imported)."""
    module_name, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError):
        return {}
    return {key: p.default for key, p in inspect.signature(cls.__init__).parameters.items()
            if p.default is not inspect.Parameter.empty}


def _run_extra(name: str, argv: Sequence[str]) -> int:
    module_name, function_name, _ = EXTRA_COMMANDS[name]
    module = __import__(module_name, fromlist=[function_name])
    function: Callable[[Sequence[str]], int] = getattr(module, function_name)
    return function(list(argv))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script: the project's own errors come out as one message
    and exit status 1 (``--debug`` or ``ALBEF_STRUCT_DEBUG=1``: with the traceback)."""
    debug, args = debug_requested(list(sys.argv[1:] if argv is None else argv))
    configure_command_logging()
    try:
        return _dispatch(args, pass_args=argv is not None)
    except Exception as error:  # noqa: BLE001 - only the project's errors are caught; the rest re-raise
        message = None if debug else user_message(error)
        if message is None:
            raise
        print(f"{message}\n{hint()}", file=sys.stderr)
        return 1


def _dispatch(args: list[str], pass_args: bool) -> int:
    if args and args[0] in EXTRA_COMMANDS:
        return _run_extra(args[0], args[1:])
    if args and args[0] in ("-h", "--help") and EXTRA_COMMANDS:
        extra = ", ".join(f"{n} ({d})" for n, (_, _, d) in EXTRA_COMMANDS.items())
        print(f"extra subcommands: {extra}\n")
    ALBEFCLI(
        pl.LightningModule,
        pl.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=42,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
        parser_class=CompactErrorParser,
        args=args if pass_args or DEBUG_FLAG in sys.argv[1:] else None,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
