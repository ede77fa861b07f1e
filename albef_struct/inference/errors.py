"""The inference commands' input errors: printed by ``albef-struct`` as one line naming the file and the fix."""

from __future__ import annotations

from albef_struct.errors import ProjectError


class InferenceInputError(ProjectError, ValueError):
    """A call or a file the model cannot take (wrong heads, counts, labels, answer list, index)."""


class MissingInputError(ProjectError, FileNotFoundError):
    """An image, image set, or index that is not there."""


class UnreadableImageError(ProjectError, OSError):
    """An image file that cannot be decoded."""
