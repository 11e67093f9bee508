"""Model families. Importing this package registers every family in MODELS."""

from compressor.models import (
    autoencoder,  # noqa: F401  (registers the convolutional autoencoder)
    compressai_zoo,  # noqa: F401  (registers the zoo archs)
    hific,  # noqa: F401  (registers HiFiC)
    jpeg,  # noqa: F401  (registers learnable-table JPEG)
    rnn,  # noqa: F401  (registers the recurrent codec)
)
from compressor.models.base import MODELS, CodecAdapter, RDOutput

__all__ = ["MODELS", "CodecAdapter", "RDOutput"]
