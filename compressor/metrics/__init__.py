"""Pure metric functions, registered by the name used in reports and gates."""

from compressor.metrics.bpp import bpp_from_bytes
from compressor.metrics.psnr import psnr
from compressor.metrics.ssim import ms_ssim, ssim
from compressor.registry import Registry

#: image-quality metrics on two HxWx3 uint8 arrays: name -> fn(original, reconstruction)
METRICS: Registry = Registry("metric")
METRICS.add("psnr", psnr)
METRICS.add("ssim", ssim)
METRICS.add("ms_ssim", ms_ssim)

__all__ = ["METRICS", "bpp_from_bytes", "ms_ssim", "psnr", "ssim"]
