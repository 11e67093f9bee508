"""Bits per pixel: from a real bitstream, or estimated from likelihoods."""

from __future__ import annotations


def bpp_from_bytes(num_bytes: int, height: int, width: int) -> float:
    return num_bytes * 8.0 / (height * width)
