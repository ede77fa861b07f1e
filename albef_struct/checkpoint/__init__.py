"""Official ALBEF checkpoints: reading files, key mapping for every layout, import onto any task, export.

ALBEF released its weights in three layouts (the README's "Checkpoints" section lists the files):

* ``pretrain``: ``{'model': state, 'optimizer', ...}`` with ``text_encoder.bert.*``, the MLM
  head ``text_encoder.cls.*``, momentum copies ``*_m`` and the feature queues
  (``ALBEF.pth``, ``ALBEF_4M.pth``);
* ``finetuned``: a bare task state dict, ``text_encoder.*`` without ``bert.``, VQA's
  ``text_decoder.*``, usually without momentum copies or queues (``mscoco.pth``,
  ``flickr30k.pth``, ``vqa.pth``, ``refcoco.pth``);
* ``nlvr``: NLVR2's 18-layer BERT whose fusion layers come in pairs with tied
  cross-attention key/value (``pretrain_model_nlvr.pth`` and NLVR2 models).

:func:`import_albef` reads any of them (or this project's own checkpoints), detects
the layout, maps the keys (:func:`convert_albef_state_dict`), fits them onto the
target task's modules (:func:`adapt_state_dict`) and reports every tensor dropped or
initialised fresh, with the reason. :func:`export_albef` writes this project's
weights back in ALBEF's layout for a task. What each task holds comes from the task
registry (:mod:`albef_struct.tasks.registry`).

The modules, one job each:

* :mod:`~albef_struct.checkpoint.files`: reading ``.pth``/``.ckpt`` files safely;
* :mod:`~albef_struct.checkpoint.keymap`: ALBEF's key names -> this project's;
* :mod:`~albef_struct.checkpoint.export`: this project's key names -> ALBEF's;
* :mod:`~albef_struct.checkpoint.layout`: what a checkpoint holds and whether it fits a model;
* :mod:`~albef_struct.checkpoint.source`: reading a path, payload or state dict once;
* :mod:`~albef_struct.checkpoint.safetensors_io`: this project's weights as safetensors;
* :mod:`~albef_struct.checkpoint.arch`: the architecture and task a checkpoint was made for;
* :mod:`~albef_struct.checkpoint.fit`: fitting a state dict onto another task's module;
* :mod:`~albef_struct.checkpoint.weights`: the weights a task module holds;
* :mod:`~albef_struct.checkpoint.importer`: the import with its report.

This package exports their public names; code in the project imports them from the modules.
"""

from albef_struct.checkpoint.arch import guess_task, infer_arch
from albef_struct.checkpoint.errors import CheckpointError
from albef_struct.checkpoint.export import albef_names, export_albef
from albef_struct.checkpoint.files import load_checkpoint_file
from albef_struct.checkpoint.fit import AdaptReport, adapt_state_dict
from albef_struct.checkpoint.importer import ALWAYS_FRESH_OK, OFFICIAL_FRESH_OK, AlbefImport, import_albef
from albef_struct.checkpoint.keymap import ImportReport, convert_albef_state_dict, map_albef_model_key
from albef_struct.checkpoint.layout import LAYOUTS, Layout, Source, check_fits
from albef_struct.checkpoint.safetensors_io import SAFETENSORS_FORMAT, save_safetensors
from albef_struct.checkpoint.source import read_source, source_from_payload
from albef_struct.checkpoint.weights import DEFAULT_QUEUE_SIZE, TaskWeights, task_arch, task_spec

__all__ = [
    "ALWAYS_FRESH_OK",
    "DEFAULT_QUEUE_SIZE",
    "LAYOUTS",
    "OFFICIAL_FRESH_OK",
    "SAFETENSORS_FORMAT",
    "AdaptReport",
    "AlbefImport",
    "CheckpointError",
    "ImportReport",
    "Layout",
    "Source",
    "TaskWeights",
    "adapt_state_dict",
    "albef_names",
    "check_fits",
    "convert_albef_state_dict",
    "export_albef",
    "guess_task",
    "import_albef",
    "infer_arch",
    "load_checkpoint_file",
    "map_albef_model_key",
    "read_source",
    "save_safetensors",
    "source_from_payload",
    "task_arch",
    "task_spec",
]
