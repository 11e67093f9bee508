"""Model families. Importing this package registers every family in MODELS."""

from compressor.models import compressai_zoo  # noqa: F401  (registers the zoo archs)
from compressor.models.base import MODELS, CodecAdapter, RDOutput

__all__ = ["MODELS", "CodecAdapter", "RDOutput"]
