"""The ``albef-struct`` command: LightningCLI (fit/validate/test/predict) plus extra subcommands."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

import pytorch_lightning as pl
from pytorch_lightning.cli import LightningCLI

# Subcommands that are not Trainer methods: name -> (module path, function taking argv).
EXTRA_COMMANDS: dict[str, tuple[str, str, str]] = {
    "analyze": ("albef_struct.analysis", "main", "latent geometry, linear probes and a 2-D picture of embeddings"),
    "convert": ("albef_struct.convert", "main", "official ALBEF checkpoint -> this project's .ckpt + .safetensors"),
}


class ALBEFCLI(LightningCLI):
    """LightningCLI with the model and data chosen by class path in YAML."""

    def before_instantiate_classes(self) -> None:
        """With ``--ckpt_path`` the weights come from that checkpoint: skip ``init_from``.

        Otherwise every resume, test or predict would first load (and need) the file
        the run was initialised from.
        """
        config = self.config[self.subcommand]
        init_args = config["model"].get("init_args") if config.get("model") else None
        if config.get("ckpt_path") and init_args is not None and init_args.get("init_from"):
            print(f"--ckpt_path given: not loading init_from={init_args['init_from']}")
            init_args["init_from"] = None


def _run_extra(name: str, argv: Sequence[str]) -> int:
    module_name, function_name, _ = EXTRA_COMMANDS[name]
    module = __import__(module_name, fromlist=[function_name])
    function: Callable[[Sequence[str]], int] = getattr(module, function_name)
    return function(list(argv))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    args = list(sys.argv[1:] if argv is None else argv)
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
        args=None if argv is None else args,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
