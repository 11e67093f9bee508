"""The error hierarchy. Every user-input problem is a CompressorError subclass.

The CLI turns a CompressorError into a one-line message and exit code 2 (GateFailed: 1).
"""

from __future__ import annotations


class CompressorError(Exception):
    """Base class: a problem the user can fix (bad recipe, checkpoint, image, argument)."""

    exit_code = 2


class RecipeError(CompressorError):
    """A recipe (or a CLI option that stands for one) is malformed."""


class CheckpointError(CompressorError):
    """A checkpoint cannot be read, is of another architecture, or is unsafe."""


class DataError(CompressorError):
    """An image folder or image file cannot be used."""


class BitstreamError(CompressorError):
    """A compressed file is truncated, corrupt, or was written by another model."""


class GateFailed(CompressorError):
    """A validation gate failed: the run worked, the candidate is not good enough."""

    exit_code = 1
