"""One checkpoint format, {format, arch, config, state_dict, meta}, and readers for foreign ones.

Every file is read with `torch.load(weights_only=True)`: a pickle that would build arbitrary
objects (and so could run code) is refused, never executed.
"""

from __future__ import annotations

import logging
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from compressor.errors import CheckpointError
from compressor.fsutil import atomic_file
from compressor.models import MODELS, CodecAdapter

log = logging.getLogger(__name__)

FORMAT = "compressor/1"
#: keys under which other trainers nest the state dict (CompressAI's examples/train.py: state_dict)
FOREIGN_KEYS = ("state_dict", "network", "model_state_dict", "model")


def safe_load(path: Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist or is not a file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0][:160]
        raise CheckpointError(
            f"checkpoint {path} refused: it holds pickled objects beyond tensors and plain "
            f"containers, which could run code when loaded ({first}); only weights-only "
            "checkpoints are accepted"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"checkpoint {path} is truncated or corrupt ({first}); expected a file written "
            "by torch.save"
        ) from None


def _split(obj: Any, path: Path) -> tuple[str | None, dict[str, Any] | None, dict, dict]:
    """(arch, config, state_dict, meta) of any supported layout."""
    if not isinstance(obj, dict):
        raise CheckpointError(
            f"checkpoint {path} holds a {type(obj).__name__}, not a dict of weights"
        )
    if obj.get("format") == FORMAT:
        return obj["arch"], dict(obj["config"]), obj["state_dict"], dict(obj.get("meta", {}))
    for key in FOREIGN_KEYS:
        if isinstance(obj.get(key), dict):
            return None, None, obj[key], {}
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return None, None, obj, {}
    raise CheckpointError(
        f"checkpoint {path} is not a model: expected our format, a dict with 'state_dict', "
        "or a bare state dict of tensors"
    )


def guess_arch(state_dict: dict[str, torch.Tensor]) -> str | None:
    for name in MODELS:
        guess = MODELS.get(name).guess_arch(state_dict)
        if guess is not None:
            return guess
    return None


def load(path: Path, arch: str | None = None) -> CodecAdapter:
    """A ready-to-use (eval mode, entropy tables built) model from a checkpoint file."""
    path = Path(path)
    stored_arch, config, state_dict, meta = _split(safe_load(path), path)
    if arch is not None and arch not in MODELS:
        MODELS.get(arch)  # raises the "unknown arch; allowed: ..." error
    if stored_arch is not None and arch is not None and arch != stored_arch:
        raise CheckpointError(
            f"checkpoint {path} is a {stored_arch} model, not {arch}; pass --arch {stored_arch} "
            "or leave --arch out"
        )
    arch = arch or stored_arch or guess_arch(state_dict)
    if arch is None:
        raise CheckpointError(
            f"cannot tell the architecture of {path}; pass --arch, one of: "
            f"{', '.join(MODELS.names())}"
        )
    adapter_cls = MODELS.get(arch)
    config = config if config is not None else adapter_cls.infer_config(arch, state_dict)
    model = adapter_cls.build(arch, config)
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as e:
        detail = " ".join(str(e).split())[:240]
        raise CheckpointError(
            f"checkpoint {path} does not fit {arch} {config}: {detail}. Is it a checkpoint of "
            f"another arch? Allowed: {', '.join(MODELS.names())}"
        ) from None
    model.meta = meta  # type: ignore[attr-defined]
    model.finalize()
    return model.eval()


def to_dict(model: CodecAdapter, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "arch": model.arch,
        "config": dict(model.config),
        "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "meta": dict(meta or getattr(model, "meta", {}) or {}),
    }


def save(model: CodecAdapter, path: Path, meta: dict[str, Any] | None = None) -> Path:
    path = Path(path)
    with atomic_file(path) as tmp:
        torch.save(to_dict(model, meta), tmp)
    log.info("saved %s checkpoint to %s", model.arch, path)
    return path
