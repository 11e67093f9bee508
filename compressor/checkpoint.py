"""One checkpoint format, {format, arch, config, state_dict, meta}, and readers for foreign ones.

Every file is read with `torch.load(weights_only=True)`: a pickle that would build arbitrary
objects (and so could run code) is refused, never executed.
"""

from __future__ import annotations

import logging
import math
import pickle
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from compressor.errors import CheckpointError, CompressorError
from compressor.fsutil import atomic_file
from compressor.models import MODELS, CodecAdapter
from compressor.models.resize import MAX_CHANNELS, check_widths
from compressor.registry import Registry

log = logging.getLogger(__name__)

FORMAT = "compressor/1"
#: keys under which other trainers nest the state dict (CompressAI's examples/train.py: state_dict)
FOREIGN_KEYS = ("state_dict", "network", "model_state_dict", "model")
OWN_FIELDS = ("format", "arch", "config", "state_dict", "meta")
#: config keys that are channel counts in some family (zoo, autoencoder, hific, mimic)
WIDTH_KEYS = frozenset({"N", "M", "H", "D", "in_channels", "out_channels"})
#: any other integer in a config (steps, sizes, qualities); the family checks its own range
MAX_CONFIG_INT = 2**31 - 1
MAX_CONFIG_KEYS = 32
#: 1 GiB of float32 weights; the largest config of any family (HiFiC at the paper's widths)
#: has 176 M parameters, the zoo's largest (cheng2020-anchor q6) 26.6 M
MAX_PARAMETERS = 2**28

#: entropy bottleneck quantiles (CompressAI): symbols per channel, and over all channels
MAX_QUANTILE_SPREAD = 1024
MAX_QUANTILE_TOTAL = 2**18

#: largest change (share of the tensor's range) a float16-stored tensor may take
HALF_TOLERANCE = 1e-3

T = TypeVar("T")


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
    except (
        RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError,
        # torch's weights-only unpickler meets a damaged pickle with these too (fuzzing)
        IndexError, TypeError, KeyError, AttributeError, struct.error,
    ) as e:  # fmt: skip
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"checkpoint {path} is truncated or corrupt ({first}); expected a file written "
            "by torch.save"
        ) from None


def _short(value: Any) -> str:
    """A repr that never quotes more than ~80 characters of hostile input."""
    text = repr(value) if not isinstance(value, dict | list | tuple) else type(value).__name__
    return text if len(text) <= 80 else text[:77] + "..."


def _split(obj: Any, path: Path) -> tuple[str | None, dict[str, Any] | None, dict, dict]:
    """(arch, config, state_dict, meta) of any supported layout, every field type-checked."""
    if not isinstance(obj, dict):
        raise CheckpointError(
            f"checkpoint {path} holds a {type(obj).__name__}, not a dict of weights"
        )
    fmt = obj.get("format")
    if fmt == FORMAT:
        return _own_fields(obj, path)
    if isinstance(fmt, str) and fmt.startswith("compressor/"):
        raise CheckpointError(
            f"checkpoint {path} has format {_short(fmt)}; this version reads {FORMAT} only"
        )
    for key in FOREIGN_KEYS:
        if isinstance(obj.get(key), dict):
            return None, None, check_state_dict(obj[key], path, key), {}
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return None, None, check_state_dict(obj, path), {}
    raise CheckpointError(
        f"checkpoint {path} is not a model: expected our format, a dict with 'state_dict', "
        "or a bare state dict of tensors"
    )


def _own_fields(obj: dict, path: Path) -> tuple[str, dict[str, Any], dict, dict]:
    """The fields of our format; a CheckpointError naming the first one of the wrong type."""
    unknown = sorted(str(k) for k in obj if k not in OWN_FIELDS)
    missing = [k for k in OWN_FIELDS if k not in obj and k != "meta"]
    if unknown or missing:
        what = f"unknown field {_short(unknown[0])}" if unknown else f"no field {missing[0]!r}"
        raise CheckpointError(
            f"checkpoint {path} ({FORMAT}) has {what}; fields: {', '.join(OWN_FIELDS)}"
        )
    arch, config, meta = obj["arch"], obj["config"], obj.get("meta", {})
    if not isinstance(arch, str) or not arch:
        raise CheckpointError(
            f"checkpoint {path}: arch must be a model name (a string), got {_short(arch)}; "
            f"allowed: {', '.join(MODELS.names())}"
        )
    for name, value in (("config", config), ("meta", meta)):
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise CheckpointError(
                f"checkpoint {path}: {name} must be a mapping with string keys, got "
                f"{type(value).__name__}"
            )
    train = meta.get("train", {})
    lmbda = train.get("lmbda") if isinstance(train, dict) else None
    if not isinstance(train, dict) or not (lmbda is None or _is_positive_number(lmbda)):
        raise CheckpointError(
            f"checkpoint {path}: meta.train must be a mapping whose lmbda (if any) is a "
            f"positive number, got {_short(train)}"
        )
    return arch, dict(config), check_state_dict(obj["state_dict"], path), dict(meta)


def _is_positive_number(value: Any) -> bool:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    return ok and math.isfinite(value) and value > 0


def check_state_dict(sd: Any, path: Path, where: str = "state_dict") -> dict[str, torch.Tensor]:
    """`sd` if it is a non-empty {str: dense tensor} with only finite floating values."""
    if not isinstance(sd, dict) or not sd:
        empty = " (empty)" if isinstance(sd, dict) else ""
        raise CheckpointError(
            f"checkpoint {path}: {where} must be a non-empty mapping of tensor names to tensors, "
            f"got {type(sd).__name__}{empty}"
        )
    for name, t in sd.items():
        if not isinstance(name, str) or not isinstance(t, torch.Tensor):
            raise CheckpointError(
                f"checkpoint {path}: {where} entry {_short(name)} is a {type(t).__name__}; "
                "allowed: tensors under string names"
            )
        if t.layout != torch.strided or t.is_quantized:
            raise CheckpointError(
                f"checkpoint {path}: tensor {_short(name)} is {t.layout} / quantized; "
                "allowed: dense float or integer tensors"
            )
        if (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise CheckpointError(
                f"checkpoint {path}: tensor {_short(name)} holds {bad} NaN/Inf value(s); "
                "only finite weights are accepted (was training diverging?)"
            )
        if name.endswith("quantiles") and t.dim() == 3 and t.size(-1) == 3:
            _check_quantiles(name, t, path)
    return sd


def _check_quantiles(name: str, q: torch.Tensor, path: Path) -> None:
    """Bound an entropy bottleneck's range: finalize() builds a table per channel whose
    length is the spread of its quantiles, in time that grows faster than the spread
    (measured: 192 channels spanning 2048 symbols take 5.6 s, spans of 10^6 exhaust memory).
    The bundled model spans at most 23 symbols."""
    spread = (q[:, 0, 2] - q[:, 0, 0]).double()
    widest, total = float(spread.max()), float(spread.clamp(min=0).sum())
    if widest > MAX_QUANTILE_SPREAD or total > MAX_QUANTILE_TOTAL:
        raise CheckpointError(
            f"checkpoint {path}: tensor {_short(name)} spans {widest:,.0f} symbols in one "
            f"channel, {total:,.0f} in all; allowed: at most {MAX_QUANTILE_SPREAD:,} per "
            f"channel and {MAX_QUANTILE_TOTAL:,} in all (a trained model spans tens)"
        )


def check_config(config: dict[str, Any], arch: str, path: Path) -> dict[str, Any]:
    """Bound every config value before anything is built: widths 1..MAX_CHANNELS, other
    integers 0..MAX_CONFIG_INT, floats finite; `widths` as resize.check_widths says."""
    if len(config) > MAX_CONFIG_KEYS:
        raise CheckpointError(f"checkpoint {path}: config has {len(config)} keys; at most 32")
    for key, value in config.items():
        where = f"checkpoint {path}: config {_short(key)} of {arch}"
        if key == "widths":
            check_widths(value, f"{where} (per-module widths)")
            continue
        is_int = isinstance(value, int) and not isinstance(value, bool)
        low, high = (1, MAX_CHANNELS) if key in WIDTH_KEYS else (0, MAX_CONFIG_INT)
        if is_int or key in WIDTH_KEYS:
            if not is_int or not low <= value <= high:
                raise CheckpointError(
                    f"{where} = {_short(value)}; allowed: an integer {low}..{high}"
                )
        elif not (isinstance(value, float) and math.isfinite(value)):
            raise CheckpointError(
                f"{where} = {_short(value)}; allowed: integers (widths 1..{MAX_CHANNELS}), "
                "finite numbers, and 'widths'"
            )
    return config


def check_size(
    adapter_cls: type[CodecAdapter], arch: str, config: dict, sd: dict, path: Path
) -> None:
    """Refuse a config that implies more weights than MAX_PARAMETERS or than the file holds.

    The model is built under FakeTensorMode: modules get shapes but no storage, so even a
    config of N=M=4096 is counted in well under a second without allocating its gigabytes.
    A family whose constructor cannot run on fake tensors is counted when really built.
    """
    try:
        with FakeTensorMode(allow_non_fake_inputs=True):
            fake = adapter_cls.build(arch, config)
        params = sum(p.numel() for p in fake.net.parameters())
    except CompressorError:
        raise
    except Exception as e:  # the real build below reports any config error in full
        log.debug("cannot count %s parameters on fake tensors: %s", arch, e)
        return
    stored = sum(t.numel() for t in sd.values())
    if params > MAX_PARAMETERS:
        allowed = f"allowed: at most {MAX_PARAMETERS:,} (1 GiB of float32)"
    elif params > stored:
        allowed = f"the file holds only {stored:,} values: the config must match its weights"
    else:
        return
    raise CheckpointError(
        f"checkpoint {path} does not fit {arch} {_short_config(config)}: that config implies "
        f"{params:,} parameters; {allowed}"
    )


def _short_config(config: dict[str, Any]) -> str:
    """'N=8, M=12' (widths left out): a config as an error message quotes it."""
    text = ", ".join(f"{k}={_short(v)}" for k, v in config.items() if k != "widths")
    return f"({text})" if len(text) <= 120 else f"({text[:117]}...)"


def guess_arch(state_dict: dict[str, torch.Tensor], models: Registry[Any] = MODELS) -> str | None:
    for name in models:
        guess = models.get(name).guess_arch(state_dict)
        if guess is not None:
            return guess
    return None


def _guarded(path: Path, doing: str, fn: Callable[[], T]) -> T:
    """fn(), with any failure a hostile file can cause turned into a one-line CheckpointError."""
    try:
        return fn()
    except CompressorError:
        raise
    except (RuntimeError, ValueError, TypeError, KeyError, IndexError, AttributeError) as e:
        detail = " ".join(str(e).split())[:200] or type(e).__name__
        raise CheckpointError(f"checkpoint {path}: cannot {doing}: {detail}") from None


def load(path: Path, arch: str | None = None, models: Registry[Any] = MODELS) -> CodecAdapter:
    """A ready-to-use (eval mode, entropy tables built) model from a checkpoint file.

    Every field is checked (types, widths, parameter count, finite weights) before the
    model is built, and any failure is a CheckpointError naming the file. `models` is the
    table of archs the file may hold (the imitators keep their own, MIMICS)."""
    path = Path(path)
    stored_arch, config, state_dict, meta = _split(safe_load(path), path)
    if arch is not None and arch not in models:
        models.get(arch)  # raises the "unknown arch; allowed: ..." error
    if stored_arch is not None and stored_arch not in models:
        raise CheckpointError(
            f"checkpoint {path} is a {_short(stored_arch)} model; allowed: "
            f"{', '.join(models.names())}"
        )
    if stored_arch is not None and arch is not None and arch != stored_arch:
        raise CheckpointError(
            f"checkpoint {path} is a {stored_arch} model, not {arch}; pass --arch {stored_arch} "
            "or leave --arch out"
        )
    arch = (
        arch
        or stored_arch
        or _guarded(path, "tell its arch", lambda: guess_arch(state_dict, models))
    )
    if arch is None:
        raise CheckpointError(
            f"cannot tell the architecture of {path}; pass --arch, one of: "
            f"{', '.join(models.names())}"
        )
    adapter_cls = models.get(arch)
    if config is None:
        config = _guarded(
            path, f"infer a {arch} config", lambda: adapter_cls.infer_config(arch, state_dict)
        )
    check_config(config, arch, path)
    check_size(adapter_cls, arch, config, state_dict, path)
    model = _guarded(
        path, f"build {arch} {_short_config(config)}", lambda: adapter_cls.build(arch, config)
    )
    try:
        model.load_state_dict(state_dict)
    except (RuntimeError, ValueError, KeyError, IndexError, TypeError) as e:
        detail = " ".join(str(e).split())[:240]
        raise CheckpointError(
            f"checkpoint {path} does not fit {arch} {_short_config(config)}: {detail}. Is it a "
            f"checkpoint of another arch? Allowed: {', '.join(models.names())}"
        ) from None
    model.meta = meta  # type: ignore[attr-defined]
    _guarded(path, "build its entropy tables", model.finalize)
    return model.eval()


def to_dict(
    model: CodecAdapter, meta: dict[str, Any] | None = None, half: bool = False
) -> dict[str, Any]:
    """The file's fields; `half` stores float32 tensors as float16 (half the size).

    A half checkpoint loads like any other: load_state_dict casts back to float32, and
    `finalize` rebuilds the entropy tables from the rounded weights, so encoder and decoder
    always agree; only the weights' rounding (measured per model) changes the results."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if half:
        state = {k: _half(v) for k, v in state.items()}
    return {
        "format": FORMAT,
        "arch": model.arch,
        "config": dict(model.config),
        "state_dict": state,
        "meta": dict(meta or getattr(model, "meta", {}) or {}),
    }


def _half(t: torch.Tensor) -> torch.Tensor:
    """float16 where it keeps the tensor to 1e-3 of its range; constants such as GDN's
    pedestal (1.5e-11) or the likelihood bound (1e-9) would flush to zero, so they stay."""
    if t.dtype != torch.float32 or not t.numel():
        return t
    h = t.half()
    err = (t - h.float()).abs().max() / t.abs().max().clamp_min(torch.finfo(torch.float32).tiny)
    return h if float(err) <= HALF_TOLERANCE else t


def save(
    model: CodecAdapter, path: Path, meta: dict[str, Any] | None = None, half: bool = False
) -> Path:
    path = Path(path)
    with atomic_file(path) as tmp:
        torch.save(to_dict(model, meta, half), tmp)
    log.info("saved %s checkpoint to %s", model.arch, path)
    return path
