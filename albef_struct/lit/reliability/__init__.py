"""What keeps a training run safe when things go wrong: Lightning callbacks and a checkpoint plugin.

* :class:`AtomicCheckpointIO` (:mod:`.checkpoint_io`) writes checkpoints atomically
  (temp file beside the target, fsync, ``os.replace``), refuses non-finite weights
  and loads only with ``torch.load(weights_only=True)``, with messages that say what to do.
* :class:`NonFiniteGuard` (:mod:`.nonfinite_guard`) stops (``on_nonfinite="error"``)
  or skips (``"skip"``) an optimizer step whose loss or gradient is NaN/Inf, naming the
  loss term and the step; modules report their loss terms with :func:`observe_losses`.
  :mod:`.nonfinite` finds the NaN/Inf tensors.
* :class:`SkippedRecordsReport` (:mod:`.skipped_records`) sums the batches' ``n_skipped``
  (records the data loader dropped with ``skip_bad_records``) per epoch and reports them.
* :class:`RNGStateCheckpoint` (:mod:`.rng_state`) and the DataModules' training loader
  (:class:`~albef_struct.data.loaders.ResumableDataLoader`) make a run resumed
  mid-epoch see the same random numbers and the same batches as an uninterrupted one.
* :class:`ConfigValidator` (:mod:`.config_validator`) runs
  :func:`albef_struct.lit.validation.validate_run` in ``setup``, so a configuration
  that cannot work fails before the first step.
* :func:`check_state_shapes` (:mod:`.state_shapes`) refuses a checkpoint built with
  other settings, naming the first mismatching key and the settings that differ.
* :class:`RunFolderGuard` (:mod:`albef_struct.lit.run_folder`) checks and locks the
  checkpoint folder.
"""

from albef_struct.lit.reliability.checkpoint_io import (
    AtomicCheckpointIO,
    NonFiniteCheckpointError,
    atomic_torch_save,
    check_finite_checkpoint,
    earlier_checkpoints,
    install_atomic_checkpoint_io,
)
from albef_struct.lit.reliability.config_validator import ConfigValidator
from albef_struct.lit.reliability.nonfinite import nonfinite_tensors, nonfinite_terms
from albef_struct.lit.reliability.nonfinite_guard import NonFiniteGuard, NonFiniteLossError, observe_losses
from albef_struct.lit.reliability.rng_state import RNGStateCheckpoint
from albef_struct.lit.reliability.skipped_records import SkippedRecordsReport
from albef_struct.lit.reliability.state_shapes import check_state_shapes
from albef_struct.lit.run_folder import RunFolderGuard

__all__ = [
    "AtomicCheckpointIO",
    "ConfigValidator",
    "NonFiniteCheckpointError",
    "NonFiniteGuard",
    "NonFiniteLossError",
    "RNGStateCheckpoint",
    "RunFolderGuard",
    "SkippedRecordsReport",
    "atomic_torch_save",
    "check_finite_checkpoint",
    "check_state_shapes",
    "earlier_checkpoints",
    "install_atomic_checkpoint_io",
    "nonfinite_tensors",
    "nonfinite_terms",
    "observe_losses",
]
