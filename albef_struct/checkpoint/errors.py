"""The error every checkpoint refusal raises: what is wrong with the file, and the fix."""

from __future__ import annotations

from albef_struct.errors import ProjectError


class CheckpointError(ProjectError, ValueError):
    """A checkpoint file or state dict that cannot be imported, with the reason and the fix."""
