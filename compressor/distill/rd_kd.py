"""Rate-distortion knowledge distillation: a narrower student learns from a trained teacher.

Design. The train loop (compressor.train) optimises `model.net` of the CodecAdapter it gets
and calls `loss_fn(model, x)`. Distillation hands it a `DistillAdapter`: a thin wrapper whose
`net` is `ModuleDict(student=<student net>, adapters=<1x1 convs>)`, so one Adam optimises the
student and the feature adapters together, while the student's own entropy-model quantiles
stay on the aux optimizer (`aux_parameters()` delegates to the student). The teacher lives
outside `net`: frozen, in eval mode, never optimised. Resume files and the best-so-far state
hold student and adapters; the file the user gets holds the student alone (a plain model
checkpoint of the student arch), because adapters only serve training.

Loss terms (weights from the recipe, compressor.distill.config.LOSS_NAMES): distortion
against the image and the rate term (the RD loss), output matching against the teacher's
real (rounded-latent) reconstruction, and latent matching of the encoder (g_a) output, read
with forward hooks and mapped to the teacher's width by a 1x1 adapter fitted by least squares
before training starts.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from compressor import checkpoint
from compressor.data import CropDataset
from compressor.distill.config import DistillParams
from compressor.errors import CheckpointError, RecipeError
from compressor.models import MODELS, CodecAdapter, RDOutput
from compressor.progress import Reporter
from compressor.train import LossFn, TrainConfig, TrainResult, train, trained_lambda

log = logging.getLogger(__name__)

#: input size of the MAC count in the report (MACs scale with area: the ratio does not care)
MACS_SIZE = (256, 256)


# -- the student ----------------------------------------------------------------------------
def student_arch(teacher: CodecAdapter, params: DistillParams) -> str:
    from compressor.models.mimic import MIMICS

    arch = params.student or teacher.arch
    family = type(teacher).family
    # imitators live in their own registry (they have no bitstream) but are still a family
    registry = MIMICS if arch in MIMICS else MODELS
    cls = registry.get(arch)  # unknown arch: RecipeError naming the allowed ones
    if cls.family != family:
        allowed = [a for a in MODELS.names() if MODELS.get(a).family == family]
        raise RecipeError(
            f"student {arch} ({cls.family} family) cannot learn from a {teacher.arch} teacher "
            f"({family} family); allowed students: {', '.join(allowed) or 'none'}"
        )
    return arch


def student_config(teacher: CodecAdapter, arch: str, params: DistillParams) -> dict[str, int]:
    """The student's widths: the explicit config, else the teacher's scaled by `width`."""
    base = {k: int(v) for k, v in teacher.config.items() if k != "widths"}
    keys = list(MODELS.get(arch).default_config(arch, 1))
    if params.config is not None:
        config = dict(params.config)
        unknown = sorted(set(config) - set(keys))
        if unknown or set(config) != set(keys):
            raise RecipeError(
                f"student config {config} does not fit {arch}: it needs exactly {', '.join(keys)}"
            )
    else:
        missing = [k for k in keys if k not in base]
        if missing:
            raise RecipeError(
                f"the {teacher.arch} teacher has no width {missing[0]} to scale for a {arch} "
                f"student; give the student config ({', '.join(keys)}) explicitly"
            )
        config = {k: max(1, int(base[k] * params.width + 1e-6)) for k in keys}
    for k, v in config.items():
        if k in base and v > base[k]:
            raise RecipeError(
                f"student {k}={v} is wider than the teacher's {k}={base[k]}; distillation "
                f"makes a smaller model (allowed: {k} <= {base[k]})"
            )
    return config


def _prune_ratios(teacher: CodecAdapter, target: dict[str, int]) -> dict[str, float]:
    """Structured-pruning ratios that leave exactly the target widths (kept = int(n*(1-r)))."""
    base = teacher.config

    def ratio(key: str) -> float:
        return 0.0 if target[key] >= base[key] else 1 - (target[key] + 0.5) / base[key]

    parts = ("encoder", "decoder", "hyper_encoder", "hyper_decoder")
    ratios = {c: ratio("N") for c in parts if c in teacher.components()}
    ratios["latent"] = ratio("M" if "M" in target else "N")
    if "hyper_encoder" in teacher.components():
        ratios["hyper_latent"] = ratio("N")
    return {k: r for k, r in ratios.items() if r > 0}


def init_from_teacher(teacher: CodecAdapter, target: dict[str, int]) -> CodecAdapter:
    """A student holding the teacher's strongest channels (L1 structured pruning)."""
    from compressor.prune import structured
    from compressor.prune.config import PruneParams

    pruned = copy.deepcopy(teacher)
    ratios = _prune_ratios(teacher, target)
    if ratios:
        params = PruneParams(method="structured", ratio=ratios, round_to=1, latency_repeats=0)
        try:
            with torch.enable_grad():  # torch-pruning traces the graph through autograd
                pruned, _ = structured.prune(pruned, params, None)
        except RecipeError as e:
            raise RecipeError(
                f"cannot start the student from the teacher's channels ({e}); use init: random"
            ) from None
    state = pruned.state_dict()
    cls = type(teacher)
    config = cls.infer_config(teacher.arch, state)  # {N', M'} exactly, or with `widths`
    student = cls.build(teacher.arch, config)
    student.load_state_dict(state)
    student.finalize()
    return student


def build_student(teacher: CodecAdapter, params: DistillParams) -> CodecAdapter:
    arch = student_arch(teacher, params)
    config = student_config(teacher, arch, params)
    init = params.init
    if init == "auto":
        init = "teacher" if arch == teacher.arch else "random"
    if init == "teacher":
        if arch != teacher.arch:
            raise RecipeError(
                f"init teacher needs the student arch to be the teacher's ({teacher.arch}), "
                f"not {arch}; use init: random"
            )
        return init_from_teacher(teacher, config)
    torch.manual_seed(params.train.seed)
    student = MODELS.get(arch).build(arch, config)
    student.finalize()
    return student


# -- the training wrapper -------------------------------------------------------------------
class DistillAdapter(CodecAdapter):
    """Student + feature adapters as one trainable CodecAdapter (see the module docstring)."""

    family = "distill"

    def __init__(self, student: CodecAdapter, adapters: nn.ModuleDict) -> None:
        net = nn.ModuleDict({"student": student.net, "adapters": adapters})
        # An arch no registry knows: the wrapper's own checkpoint can never pass for a model.
        super().__init__(f"distill:{student.arch}", student.config, net)
        self.student = student
        self.pad_multiple = student.pad_multiple  # type: ignore[misc]

    @classmethod
    def build(cls, arch: str, config: dict[str, Any]) -> CodecAdapter:
        raise CheckpointError(f"{arch} is a distillation wrapper, not a model to build")

    @classmethod
    def default_config(cls, arch: str, quality: int) -> dict[str, Any]:
        raise CheckpointError(f"{arch} is a distillation wrapper; it has no quality levels")

    @classmethod
    def infer_config(cls, arch: str, state_dict: dict[str, torch.Tensor]) -> dict[str, Any]:
        raise CheckpointError(f"{arch} is a distillation wrapper, not a stored model")

    @property
    def adapters(self) -> nn.ModuleDict:
        return cast(nn.ModuleDict, cast(nn.ModuleDict, self.net)["adapters"])

    def components(self) -> dict[str, nn.Module]:
        return self.student.components()

    def forward_rd(self, x: torch.Tensor) -> RDOutput:
        return self.student.forward_rd(x)

    def compress(self, x: torch.Tensor) -> bytes:
        return self.student.compress(x)

    def decompress(self, data: bytes) -> torch.Tensor:
        return self.student.decompress(data)

    def aux_loss(self) -> torch.Tensor:
        return self.student.aux_loss()

    def aux_parameters(self) -> list[nn.Parameter]:
        return self.student.aux_parameters()

    def finalize(self) -> None:
        self.student.finalize()

    def load_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        # The student's own loader resizes CompressAI's entropy-table buffers first.
        parts: dict[str, dict[str, torch.Tensor]] = {"student": {}, "adapters": {}}
        for key, value in state_dict.items():
            head, _, rest = key.partition(".")
            if head not in parts:
                raise CheckpointError(f"distillation state has an unexpected tensor {key!r}")
            parts[head][rest] = value
        self.student.load_state_dict(parts["student"])
        self.adapters.load_state_dict(parts["adapters"])


def run_capturing(model: CodecAdapter, x: torch.Tensor) -> tuple[RDOutput, torch.Tensor | None]:
    """The RD output and the encoder (g_a) output of one forward pass; the hook lives for this
    call only, so the teacher and student carry no hooks outside training steps."""
    seen: dict[str, torch.Tensor] = {}
    encoder = model.components().get("encoder")
    handle = None
    if encoder is not None:
        handle = encoder.register_forward_hook(lambda _m, _a, out: seen.__setitem__("y", out))
    try:
        return model.forward_rd(x), seen.get("y")
    finally:
        if handle is not None:
            handle.remove()


def latent_loss(y_s: torch.Tensor, y_t: torch.Tensor, adapter: nn.Module) -> torch.Tensor:
    """MSE of the adapted student latent to the teacher's, relative to the teacher's energy
    (scale-free, so one weight suits every model and quality)."""
    return F.mse_loss(adapter(y_s), y_t) / y_t.pow(2).mean().clamp_min(1e-8)


def distill_loss(teacher: CodecAdapter, weights: dict[str, float], lmbda: float) -> LossFn:
    """The train loop's loss: the weighted sum of the terms that have a weight above 0."""
    w = {k: v for k, v in weights.items() if v > 0}
    needs_teacher = "output" in w or "latent" in w
    scale = lmbda * 255.0**2  # the RD loss's distortion scale, for image and teacher MSE

    def loss_fn(model: CodecAdapter, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        wrapper = cast(DistillAdapter, model)
        out, y_s = run_capturing(wrapper.student, x)
        num_pixels = x.size(0) * x.size(2) * x.size(3)
        bpp = out.bpp(num_pixels)
        mse = F.mse_loss(out.x_hat, x)
        terms: dict[str, torch.Tensor] = {"distortion": scale * mse, "rate": bpp}
        if needs_teacher:
            with torch.no_grad():
                t_out, y_t = run_capturing(teacher, x)
            if "output" in w:
                terms["output"] = scale * F.mse_loss(out.x_hat, t_out.x_hat)
            if "latent" in w:
                if y_s is None or y_t is None:
                    raise RecipeError(f"{teacher.arch} has no encoder output to match (latent)")
                terms["latent"] = latent_loss(y_s, y_t, wrapper.adapters["latent"])
        loss = sum((w[k] * terms[k] for k in w), torch.zeros(()))
        if out.extra_loss is not None:
            loss = loss + out.extra_loss
        logs = {f"{k}_term": float(v.item()) for k, v in terms.items()}
        psnr = -10 * math.log10(max(mse.item(), 1e-10))
        return loss, {"loss": loss.item(), "bpp": bpp.item(), "psnr": psnr, **logs}

    return loss_fn


@torch.no_grad()
def fit_adapter(
    student: CodecAdapter, teacher: CodecAdapter, batch: torch.Tensor
) -> nn.Conv2d | nn.Identity:
    """A 1x1 conv from the student's latent width to the teacher's, fitted by least squares on
    one batch, so latent matching starts from the best linear map rather than noise."""
    student.eval()
    teacher.eval()
    _, y_s = run_capturing(student, batch)
    _, y_t = run_capturing(teacher, batch)
    if y_s is None or y_t is None:
        raise RecipeError(f"{teacher.arch} has no encoder output to match (loss latent)")
    cs, ct = y_s.size(1), y_t.size(1)
    a = y_s.permute(0, 2, 3, 1).reshape(-1, cs).double()
    b = y_t.permute(0, 2, 3, 1).reshape(-1, ct).double()
    a1 = torch.cat([a, torch.ones(a.size(0), 1, dtype=a.dtype)], dim=1)
    # normal equations with a ridge relative to the latent's energy: stable when the batch has
    # few latent pixels, negligible otherwise
    gram = a1.T @ a1
    gram = gram + 1e-6 * gram.diagonal().mean() * torch.eye(cs + 1, dtype=a.dtype)
    sol = torch.linalg.solve(gram, a1.T @ b)  # (cs + 1) x ct
    conv = nn.Conv2d(cs, ct, 1)
    conv.weight.copy_(sol[:cs].T.float()[..., None, None])
    assert conv.bias is not None
    conv.bias.copy_(sol[cs].float())
    return conv


# -- the run --------------------------------------------------------------------------------
@dataclass
class DistillResult:
    student: CodecAdapter
    train: TrainResult
    report: dict[str, Any] = field(default_factory=dict)


def train_config(teacher: CodecAdapter, params: DistillParams) -> TrainConfig:
    """The budget, with the teacher's RD lambda unless the recipe sets one."""
    lmbda = trained_lambda(teacher)
    if "lmbda" not in params.train.model_fields_set and lmbda:
        return params.train.model_copy(update={"lmbda": lmbda})
    return params.train


def sample_batch(images: list[np.ndarray], crop: int, count: int = 4) -> torch.Tensor:
    side = min(crop, *(min(a.shape[:2]) for a in images[:count])) // 64 * 64
    data = CropDataset(images[:count], max(side, 64), train=False)
    return torch.stack([data[i] for i in range(len(data))])


def complexity(teacher: CodecAdapter, student: CodecAdapter) -> list[dict[str, Any]]:
    """Params and MACs per component of teacher and student, and the student/teacher ratio."""
    from compressor.metrics.complexity import component_table

    t_rows = {r["component"]: r for r in component_table(teacher, *MACS_SIZE)}
    rows = []
    for s in component_table(student, *MACS_SIZE):
        t = t_rows.get(s["component"], {})
        t_macs, s_macs = t.get("macs"), s["macs"]
        rows.append(
            {
                "component": s["component"],
                "params_teacher": t.get("params"),
                "params_student": s["params"],
                "macs_teacher": t_macs,
                "macs_student": s_macs,
                "macs_ratio": (s_macs / t_macs) if t_macs and s_macs is not None else None,
            }
        )
    return rows


def distill(
    teacher: CodecAdapter,
    images: list[np.ndarray],
    params: DistillParams,
    out: Path,
    *,
    resume: bool = True,
    reporter: Reporter | None = None,
    meta: dict[str, Any] | None = None,
) -> DistillResult:
    """Distil `teacher` into a new student, save the student alone to `out` and return it."""
    cfg = train_config(teacher, params)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    teacher.eval()  # the teacher's targets are its real (rounded-latent) outputs
    student = build_student(teacher, params)
    adapters = nn.ModuleDict()
    if params.losses.get("latent", 0) > 0:
        adapters["latent"] = fit_adapter(student, teacher, sample_batch(images, cfg.crop))
    wrapper = DistillAdapter(student, adapters)
    out = Path(out)
    work = out.with_name(f"{out.stem}.distill{out.suffix or '.pt'}")  # the wrapper's file
    info = {
        "distill": {
            **params.model_dump(mode="json", exclude={"train"}),
            "teacher": {"arch": teacher.arch, "config": teacher.config},
        }
    }
    result = train(
        wrapper,
        images,
        cfg,
        work,
        loss_fn=distill_loss(teacher, params.losses, cfg.lmbda),
        resume=resume,
        meta={**(meta or {}), **info},
        reporter=reporter,
    )
    saved_meta = checkpoint.safe_load(work)["meta"]
    checkpoint.save(student, out, saved_meta)  # the student alone: a plain model checkpoint
    work.unlink(missing_ok=True)
    student.meta = saved_meta  # type: ignore[attr-defined]
    report = {
        "teacher": {"arch": teacher.arch, "config": teacher.config},
        "student": {"arch": student.arch, "config": student.config},
        "losses": params.losses,
        "lmbda": cfg.lmbda,
        "steps": result.steps,
        "stopped": result.stopped,
        "best_val_loss": result.best_val_loss,
        "last_eval": result.history[-1] if result.history else {},
        "macs_size": list(MACS_SIZE),
        "components": complexity(teacher, student),
    }
    return DistillResult(student.eval(), result, report)
