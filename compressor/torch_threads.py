"""torch's side of the thread policy (compressor.threads): a run's thread count, applied to
torch for the run only. Kept apart so the torch-free runtime never reaches a torch import."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """torch's intra-op threads for the duration of a run, restored afterwards: no command
    or step changes them for the rest of the process as a side effect."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
