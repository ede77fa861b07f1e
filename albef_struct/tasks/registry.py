"""The task registry: what the project knows about each task, declared once by the task's LightningModule.

A task module decorates its LightningModule with :func:`register_task`, naming the
task's heads, defaults, checkpoint rules (teacher, queue, heads that may start fresh)
and DataModule. Everything else reads :data:`TASKS`: checkpoint import and export
(:mod:`albef_struct.checkpoint`), ``albef-struct convert``, the benchmarks and the
demo's closing table.

The registry imports nothing heavy, so :mod:`albef_struct.checkpoint` can read it
although the task modules import the checkpoint code: the task modules register
themselves when imported, and the first lookup in :data:`TASKS` imports the modules
listed in :data:`TASK_MODULES`, the one place that says where tasks live. Classes are
held as classes, never named by string.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from albef_struct.lit.schedule import OptimConfig
    from albef_struct.models import ALBEFConfig

#: The modules that define tasks, in the order tasks are listed (pretraining, then the demo's order).
TASK_MODULES = (
    "albef_struct.lit.pretrain",
    "albef_struct.tasks.retrieval",
    "albef_struct.tasks.ve",
    "albef_struct.tasks.vqa",
    "albef_struct.tasks.nlvr",
    "albef_struct.tasks.grounding",
)
#: Every head flag of :class:`~albef_struct.models.ALBEFConfig`, off; a task names those it turns on.
NO_HEADS: Mapping[str, Any] = MappingProxyType(dict(
    projections=False, itm_head=False, mlm_head=False, answer_decoder_layers=0, classifier_classes=0, ta_head=False,
    fusion_streams=1,
))
#: ``answer_decoder_layers`` meaning one decoder layer per fusion layer unless ``arch`` sets it (ALBEF's VQA).
PER_FUSION_LAYER = -1
#: The head flags that tell tasks apart, most telling first: a config's task is the one that agrees with it
#: on the earliest of these flags (projections and the ITM head never decide).
TASK_DEFINING_HEADS = ("answer_decoder_layers", "ta_head", "fusion_streams", "classifier_classes", "mlm_head")
#: Where the task modules lived before they moved into the package; old checkpoints and configs name
#: their classes ``tasks.<module>.<Class>``.
LEGACY_PACKAGE = "tasks."
PACKAGE = "albef_struct.tasks."


@dataclass(frozen=True)
class SummaryMetric:
    """One row of ``make demo``'s closing table: a metric of the task's results file and its chance level."""

    metric: str
    label: str
    chance_key: str | None = None  # the key in the file's "chance" object (default: ``metric``)

    @property
    def chance(self) -> str:
        return self.chance_key or self.metric


@dataclass(frozen=True)
class TaskSpec:
    """One task: its LightningModule and DataModule, the weights it holds, its defaults and its report."""

    name: str
    description: str
    module: type  # the LightningModule
    datamodule: type  # the LightningDataModule its batches come from
    heads: Mapping[str, Any]  # every ALBEFConfig head flag the task builds (``arch`` only chooses sizes)
    teacher: bool = True  # an EMA teacher ``teacher.model.*`` (with the module's default arguments)
    queue: bool = False  # feature queues ``queue.*``
    fresh_ok: Mapping[str, str] = field(default_factory=dict)  # state prefixes a checkpoint may lack, and why
    image_res: int = 384  # the default resolution when no ``arch`` is given
    optim: OptimConfig | None = None  # the default AdamW + schedule (ALBEF's recipe)
    training_loss: str | None = None  # the module's method ``(batch, alpha) -> loss or {"loss": ...}``
    result_name: str | None = None  # the test's results file in the run folder: ``<result_name>.json``
    title: str = ""  # the task's stage in ``make demo``'s closing table
    summary: tuple[SummaryMetric, ...] = ()  # its rows there

    @property
    def class_path(self) -> str:
        """The LightningModule's import path, as configs name it in ``model.class_path``."""
        return f"{self.module.__module__}.{self.module.__qualname__}"

    def arch(self, arch: ALBEFConfig | Mapping[str, Any] | None) -> ALBEFConfig:
        """``arch`` (sizes; None: ALBEF-base at :attr:`image_res`) with this task's head flags."""
        from albef_struct.models import ALBEFConfig, VisionConfig

        if arch is None:
            base = ALBEFConfig(vision=VisionConfig(img_size=self.image_res))
        else:
            base = ALBEFConfig.from_dict(dict(arch) if isinstance(arch, Mapping) else arch)
        heads = dict(self.heads)
        if heads["answer_decoder_layers"] == PER_FUSION_LAYER:
            heads["answer_decoder_layers"] = base.answer_decoder_layers or base.text.fusion_layers
        return replace(base, **heads)

    def head_mismatches(self, config: ALBEFConfig) -> tuple[bool, ...]:
        """Whether ``config`` differs from this task in each flag of :data:`TASK_DEFINING_HEADS`, in order."""
        return tuple(_head_present(config, flag) != _head_present(self.heads, flag) for flag in TASK_DEFINING_HEADS)


def _head_present(heads: Any, flag: str) -> Any:
    """A head flag's value as it tells tasks apart: a decoder or classifier of any size counts as present."""
    value = heads[flag] if isinstance(heads, Mapping) else getattr(heads, flag)
    return bool(value) if flag in ("answer_decoder_layers", "classifier_classes") else value


class TaskRegistry(Mapping[str, TaskSpec]):
    """Task name -> :class:`TaskSpec`, in :data:`TASK_MODULES` order; the first lookup imports those modules."""

    def __init__(self, modules: tuple[str, ...]) -> None:
        self._modules = modules
        self._specs: dict[str, TaskSpec] = {}
        self._imported = False
        self._importing = False

    def add(self, spec: TaskSpec) -> None:
        """Register ``spec``; registering the same class again (a module reload) replaces it."""
        known = self._specs.get(spec.name)
        if known is not None and known.class_path != spec.class_path:
            raise ValueError(f"task {spec.name!r} is registered twice: by {known.class_path} and {spec.class_path}")
        self._specs[spec.name] = spec

    def _import_task_modules(self) -> None:
        if self._imported or self._importing:
            return
        self._importing = True
        try:
            for path in self._modules:
                importlib.import_module(path)
            self._imported = True
        finally:
            self._importing = False

    def _rank(self, name: str) -> tuple[int, int]:
        module = self._specs[name].module.__module__
        listed = self._modules.index(module) if module in self._modules else len(self._modules)
        return listed, list(self._specs).index(name)

    def __getitem__(self, name: str) -> TaskSpec:
        self._import_task_modules()
        return self._specs[name]

    def __iter__(self) -> Iterator[str]:
        self._import_task_modules()
        return iter(sorted(self._specs, key=self._rank))

    def __len__(self) -> int:
        self._import_task_modules()
        return len(self._specs)


TASKS = TaskRegistry(TASK_MODULES)

Module = TypeVar("Module", bound=type)


def register_task(
    name: str,
    description: str,
    *,
    datamodule: type,
    heads: Mapping[str, Any] | None = None,
    **details: Any,
) -> Callable[[Module], Module]:
    """Class decorator: register the decorated LightningModule as task ``name`` and give it ``task_spec``.

    ``heads`` names the head flags the task turns on (the rest are off, see
    :data:`NO_HEADS`); ``details`` are the other :class:`TaskSpec` fields.
    """
    unknown = set(heads or {}) - set(NO_HEADS)
    if unknown:
        raise ValueError(f"task {name!r}: {sorted(unknown)} are not head flags; choose from {sorted(NO_HEADS)}")

    def register(module: Module) -> Module:
        spec = TaskSpec(name, description, module, datamodule, MappingProxyType({**NO_HEADS, **(heads or {})}), **details)
        TASKS.add(spec)
        module.task_spec = spec
        return module

    return register


def task_of(config: ALBEFConfig) -> str:
    """The task whose heads ``config`` has: the one agreeing with it on the most telling head flags.

    Mismatches are compared in :data:`TASK_DEFINING_HEADS` order (a differing answer
    decoder outweighs everything after it); ties go to the earlier registered task.
    """
    return min(TASKS, key=lambda name: TASKS[name].head_mismatches(config))


def current_class_path(path: str) -> str:
    """``path`` as it is now: ``tasks.ve.VEModule`` (before the task modules moved) -> ``albef_struct.tasks.ve.VEModule``."""
    return PACKAGE + path[len(LEGACY_PACKAGE) :] if path.startswith(LEGACY_PACKAGE) else path


def task_of_class_path(path: str) -> str | None:
    """The task whose LightningModule ``path`` names (old ``tasks.*`` paths and re-exports such as
    ``albef_struct.lit.PretrainModule`` too); None for other classes."""
    path = current_class_path(path)
    found = next((name for name, spec in TASKS.items() if spec.class_path == path), None)
    if found is None and "." in path:
        module_name, _, class_name = path.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError):
            return None
        found = next((name for name, spec in TASKS.items() if spec.module is cls), None)
    return found
