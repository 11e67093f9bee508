"""compressor: make trained learned-image-compression models small and fast, and prove it."""

__version__ = "0.1.0"
