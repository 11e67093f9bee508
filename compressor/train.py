"""The one training loop. Training from scratch, fine-tuning, QAT and distillation all call it.

Rate-distortion loss `lambda * 255^2 * MSE + bpp` (CompressAI's RateDistortionLoss), the
entropy models' aux loss on its own optimizer, Adam, ReduceLROnPlateau on the held-out loss,
early stopping (patience, min delta), random crops + flips, and a resume file that restores
the model, both optimizers, the scheduler, the RNG and the step count.

Under torchrun the same loop is data-parallel (compressor.distributed): every rank draws the
same global batch of `batch_size x world` image indices and crops its own share with its own
random stream (seed + rank); DistributedDataParallel averages the gradients; rank 0 alone
evaluates, decides early stopping, writes the checkpoint and the resume file.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from compressor import checkpoint, distributed
from compressor.data import CropDataset
from compressor.errors import CheckpointError, DataError
from compressor.fsutil import atomic_file
from compressor.models import CodecAdapter
from compressor.progress import NullReporter, Reporter

log = logging.getLogger(__name__)

LossFn = Callable[[CodecAdapter, torch.Tensor], tuple[torch.Tensor, dict[str, float]]]


class TrainConfig(BaseModel):
    """Hyper-parameters of one training run (CLI options and recipe `finetune` fields)."""

    model_config = ConfigDict(extra="forbid")

    lmbda: float = Field(0.0035, gt=0, description="RD trade-off; CompressAI's value per quality")
    crop: int = Field(256, ge=64, description="training crop size (pixels)")
    val_crop: int = Field(512, ge=64, description="centre crop of held-out images (pixels)")
    batch_size: int = Field(8, ge=1)
    lr: float = Field(1e-4, gt=0)
    aux_lr: float = Field(1e-3, gt=0)
    max_steps: int = Field(1000, ge=1, description="total optimizer steps (across resumes)")
    max_minutes: float | None = Field(None, gt=0, description="wall-clock budget (across resumes)")
    eval_every: int = Field(100, ge=1, description="steps between held-out evaluations")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="share of images held out")
    patience: int = Field(8, ge=1, description="evaluations without improvement before stopping")
    min_delta: float = Field(1e-4, ge=0, description="improvement smaller than this is none")
    lr_patience: int = Field(3, ge=1, description="evaluations without improvement before LR/2")
    clip_max_norm: float = Field(1.0, ge=0)
    seed: int = 0
    exclude_images: list[str] = Field(
        default_factory=list,
        description="file names in the training folder never trained on (a search holds its "
        "trial images out this way)",
    )
    threads: int | None = Field(None, ge=1)


@dataclass
class TrainResult:
    steps: int
    best_val_loss: float
    stopped: str
    history: list[dict[str, float]] = field(default_factory=list)


def rd_loss(lmbda: float) -> LossFn:
    def loss_fn(model: CodecAdapter, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        out = model.forward_rd(x)
        num_pixels = x.size(0) * x.size(2) * x.size(3)
        mse = F.mse_loss(out.x_hat, x)
        bpp = out.bpp(num_pixels)
        dist = lmbda * 255.0**2 * mse if model.rd_distortion else 0.0
        loss = dist + bpp
        if out.extra_loss is not None:
            loss = loss + out.extra_loss
        psnr = -10 * math.log10(max(mse.item(), 1e-10))
        return loss, {"loss": loss.item(), "bpp": bpp.item(), "psnr": psnr}

    return loss_fn


def trained_lambda(model: CodecAdapter) -> float | None:
    """The RD lambda a checkpoint was trained with (its meta), if it records one."""
    meta = getattr(model, "meta", {}) or {}
    value = meta.get("train", {}).get("lmbda")
    return float(value) if value else None


def split_images(images: list[np.ndarray], fraction: float, seed: int) -> tuple[list, list]:
    if len(images) < 2:
        raise DataError(f"training needs at least 2 images (one held out); got {len(images)}")
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = max(1, round(len(images) * fraction))
    return [images[i] for i in order[n_val:]], [images[i] for i in order[:n_val]]


def resume_path(out: Path) -> Path:
    return Path(out).with_suffix(".resume.pt")


class _Trainer:
    def __init__(
        self,
        model: CodecAdapter,
        cfg: TrainConfig,
        loss_fn: LossFn,
        group: distributed.Group | None = None,
    ) -> None:
        self.model, self.cfg, self.loss_fn = model, cfg, loss_fn
        self.group = group or distributed.Group()
        self.forward: distributed.Forward = lambda x: loss_fn(model, x)
        aux_ids = {id(p) for p in model.aux_parameters()}
        main = [p for p in model.net.parameters() if id(p) not in aux_ids and p.requires_grad]
        self.opt = torch.optim.Adam(main, lr=cfg.lr)
        self.aux_opt = torch.optim.Adam(model.aux_parameters(), lr=cfg.aux_lr) if aux_ids else None
        self.sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.opt, mode="min", factor=0.5, patience=cfg.lr_patience - 1
        )
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.step, self.elapsed, self.bad_evals = 0, 0.0, 0
        self.best = math.inf
        self.best_state: dict[str, torch.Tensor] | None = None
        self.history: list[dict[str, float]] = []

    def wrap(self) -> None:
        """Route the training forward through DDP (after any restore: DDP starts from the
        restored weights and CompressAI's loader may have replaced buffers)."""
        self.forward = self.group.wrap(self.model, self.loss_fn)

    def state(self) -> dict[str, Any]:
        return {
            "checkpoint": checkpoint.to_dict(self.model),
            "opt": self.opt.state_dict(),
            "aux_opt": self.aux_opt.state_dict() if self.aux_opt else {},
            "sched": self.sched.state_dict(),
            "gen": self.gen.get_state(),
            "rng": torch.get_rng_state(),
            "step": self.step,
            "elapsed": self.elapsed,
            "bad_evals": self.bad_evals,
            "best": self.best,
            "best_state": self.best_state or {},
            "history": self.history,
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["checkpoint"]["state_dict"])
        self.opt.load_state_dict(state["opt"])
        if self.aux_opt and state["aux_opt"]:
            self.aux_opt.load_state_dict(state["aux_opt"])
        self.sched.load_state_dict(state["sched"])
        self.gen.set_state(state["gen"])
        torch.set_rng_state(state["rng"])
        self.step, self.elapsed = int(state["step"]), float(state["elapsed"])
        self.bad_evals, self.best = int(state["bad_evals"]), float(state["best"])
        self.best_state = state["best_state"] or None
        self.history = list(state["history"])
        ranks = state.get("rank_rng")
        if self.group.enabled:  # each rank's own crop/noise stream, as before the restart
            if isinstance(ranks, list) and len(ranks) == self.group.world:
                torch.set_rng_state(ranks[self.group.rank])
            else:  # another number of processes than before: fresh, distinct streams
                torch.manual_seed(self.cfg.seed + self.group.rank + 1000 * self.step)

    def train_step(self, batch: torch.Tensor) -> dict[str, float]:
        self.model.train()
        self.opt.zero_grad(set_to_none=True)
        loss, logs = self.forward(batch)
        loss.backward()  # under DDP: gradients averaged over the ranks here
        if self.cfg.clip_max_norm > 0:
            torch.nn.utils.clip_grad_norm_(
                [p for g in self.opt.param_groups for p in g["params"]], self.cfg.clip_max_norm
            )
        self.opt.step()
        if self.aux_opt is not None:
            self.aux_opt.zero_grad(set_to_none=True)
            aux = self.model.aux_loss()
            aux.backward()
            self.aux_opt.step()
            logs["aux"] = aux.item()
        logs.update(self.model.extra_step(batch, self.step))  # e.g. a GAN discriminator
        self.group.sync_from_main(self.model, only_outside_reducer=True)
        self.step += 1
        return logs

    @torch.no_grad()
    def evaluate(self, val: CropDataset) -> dict[str, float]:
        self.model.eval()
        sums: dict[str, float] = {}
        for i in range(len(val)):
            _, logs = self.loss_fn(self.model, val[i][None].to(self.group.device))
            for k, v in logs.items():
                sums[k] = sums.get(k, 0.0) + v / len(val)
        return sums

    def after_eval(self, logs: dict[str, float]) -> bool:
        """Record an evaluation; True when early stopping says stop."""
        self.sched.step(logs["loss"])
        self.history.append({"step": self.step, "lr": self.opt.param_groups[0]["lr"], **logs})
        log.info(
            "step %d: held-out loss %.4f  bpp %.4f  PSNR %.2f dB  lr %.2g  (%.1f min)",
            self.step,
            logs["loss"],
            logs["bpp"],
            logs["psnr"],
            self.opt.param_groups[0]["lr"],
            self.elapsed / 60,
        )
        if logs["loss"] < self.best - self.cfg.min_delta:
            self.best, self.bad_evals = logs["loss"], 0
            self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        else:
            self.bad_evals += 1
        return self.bad_evals >= self.cfg.patience


def train(
    model: CodecAdapter,
    images: list[np.ndarray],
    cfg: TrainConfig,
    out: Path,
    *,
    loss_fn: LossFn | None = None,
    resume: bool = True,
    meta: dict[str, Any] | None = None,
    reporter: Reporter | None = None,
    allow_oversubscribe: bool = False,
) -> TrainResult:
    """Train `model` in place, save the best held-out checkpoint to `out`, keep a resume file.
    Under torchrun: data-parallel, and only rank 0 reports and writes."""
    group = distributed.setup()
    _set_threads(cfg, group, allow_oversubscribe)
    torch.manual_seed(cfg.seed + group.rank)
    reporter = (reporter or NullReporter()) if group.is_main else NullReporter()
    train_imgs, val_imgs = split_images(images, cfg.val_fraction, cfg.seed)
    train_set = CropDataset(train_imgs, cfg.crop, train=True)
    val_crop = min(cfg.val_crop, *(min(a.shape[:2]) for a in val_imgs)) // 64 * 64
    val_set = CropDataset(val_imgs, max(val_crop, 64), train=False)
    model.net.to(group.device)
    group.sync_from_main(model)  # each rank built or loaded its own copy: rank 0's wins
    trainer = _Trainer(model, cfg, loss_fn or rd_loss(cfg.lmbda), group)
    rpath = resume_path(out)
    if resume and group.from_main(rpath.exists()):
        _restore_resume(trainer, rpath)
        log.info("resumed %s at step %d", rpath, trainer.step)
    trainer.wrap()
    stopped = _loop(trainer, train_set, val_set, rpath, reporter)
    model.net.to("cpu")
    if trainer.best_state is not None:
        model.load_state_dict(trainer.best_state)
    model.finalize()
    result = TrainResult(trainer.step, trainer.best, stopped, trainer.history)
    train_meta = {
        "train": {
            **cfg.model_dump(),
            "steps": trainer.step,
            "stopped": stopped,
            "best_val_loss": trainer.best,
            "minutes": round(trainer.elapsed / 60, 2),
            **({"processes": group.world} if group.enabled else {}),
        },
        "history": trainer.history,
    }
    if group.is_main:
        checkpoint.save(model, out, {**(meta or {}), **train_meta})
    group.barrier()  # no rank returns before the checkpoint exists
    return result


def _set_threads(cfg: TrainConfig, group: distributed.Group, allow: bool) -> None:
    if group.enabled:  # the cores shared out among this machine's ranks
        option = f"{group.local_world} processes"
        torch.set_num_threads(
            distributed.check_cores(group.local_world, cfg.threads, allow, option)
        )
    elif cfg.threads:
        torch.set_num_threads(cfg.threads)


def _loop(
    trainer: _Trainer, train_set: CropDataset, val_set: CropDataset, rpath: Path, rep: Reporter
) -> str:
    """Steps until max_steps, early stopping or the time budget; returns which one."""
    cfg, group = trainer.cfg, trainer.group
    rep.start("training", cfg.max_steps)
    rep.advance(trainer.step)
    t0 = time.monotonic() - trainer.elapsed
    stopped = "max_steps"
    while trainer.step < cfg.max_steps:
        # one global batch of indices on every rank (the shared generator); each its share
        idx = torch.randint(len(train_set), (cfg.batch_size * group.world,), generator=trainer.gen)
        mine = idx[group.rank * cfg.batch_size : (group.rank + 1) * cfg.batch_size]
        batch = torch.stack([train_set[int(i)] for i in mine]).to(group.device)
        logs, trainer.elapsed = group.reduce_logs(trainer.train_step(batch), time.monotonic() - t0)
        rep.advance(1, loss=logs["loss"], bpp=logs["bpp"], psnr=logs["psnr"])
        last = trainer.step >= cfg.max_steps
        over_time = cfg.max_minutes is not None and trainer.elapsed > cfg.max_minutes * 60
        if trainer.step % cfg.eval_every == 0 or last or over_time:
            if _held_out(trainer, val_set):
                stopped = "early_stopping"
            _save_resume(trainer, rpath)
            if stopped == "early_stopping":
                break
        if over_time:
            stopped = "max_minutes"
            break
    rep.finish()
    return stopped


def _held_out(trainer: _Trainer, val_set: CropDataset) -> bool:
    """Rank 0 evaluates and decides early stopping; every rank records the same evaluation
    (same LR schedule, best state, history) and obeys rank 0's decision."""
    group = trainer.group
    logs, stop = None, False
    if group.is_main:
        logs = trainer.evaluate(val_set)
        stop = trainer.after_eval(logs)
    logs, stop = group.from_main((logs, stop))
    if not group.is_main:
        trainer.after_eval(logs)
    return bool(stop)


RESUME_KEYS = (
    "checkpoint", "opt", "aux_opt", "sched", "gen", "rng", "step", "elapsed", "bad_evals",
    "best", "best_state", "history",
)  # fmt: skip


def _resume_problem(state: Any, path: Path) -> str | None:
    """What is wrong with a resume file's content (None: nothing found before restoring)."""
    if not isinstance(state, dict):
        return f"it holds a {type(state).__name__}, not a training state"
    missing = [k for k in RESUME_KEYS if k not in state]
    if missing:
        return f"it has no {missing[0]!r}"
    ckpt = state["checkpoint"]
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        return "its 'checkpoint' is not a checkpoint"
    checkpoint.check_state_dict(ckpt["state_dict"], path, "checkpoint.state_dict")
    if not (isinstance(state["best_state"], dict) and not state["best_state"]):  # {}: none yet
        checkpoint.check_state_dict(state["best_state"], path, "best_state")
    for key in ("step", "bad_evals"):
        value = state[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            return f"its {key!r} is {repr(value)[:40]}, not a count"
    for key in ("elapsed", "best"):
        value = state[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
            return f"its {key!r} is not a number"
    if not all(isinstance(state[k], torch.Tensor) for k in ("gen", "rng")):
        return "its random generator states are not tensors"
    if not isinstance(state["history"], list):
        return "its 'history' is not a list"
    return None


RESUME_HINT = "delete it or pass --no-resume to start over"


def _unfit(path: Path, problem: str) -> CheckpointError:
    return CheckpointError(
        f"resume file {path} does not fit this training run ({problem}); {RESUME_HINT}"
    )


def _read_resume(path: Path) -> dict[str, Any]:
    try:
        state = checkpoint.safe_load(path)
        problem = _resume_problem(state, path)
    except CheckpointError as e:
        raise CheckpointError(f"resume file {path} is unusable ({e}); {RESUME_HINT}") from None
    if problem is not None:
        raise _unfit(path, problem)
    return state  # type: ignore[no-any-return]


def _restore_resume(trainer: _Trainer, path: Path) -> None:
    """Restore `trainer` from a resume file; any mismatch is one CheckpointError naming it.
    Under DDP rank 0 reads it (it wrote it, maybe on another machine) and sends it to all."""
    state = trainer.group.run_on_main(lambda: _read_resume(path))
    try:
        trainer.restore(state)
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as e:
        raise _unfit(path, " ".join(str(e).split())[:200] or type(e).__name__) from None


def _save_resume(trainer: _Trainer, path: Path) -> None:
    """Rank 0 writes; the file holds every rank's random stream so a restart goes on alike."""
    rank_rng = trainer.group.gather(torch.get_rng_state())
    if not trainer.group.is_main:
        return
    state = trainer.state()
    if rank_rng is not None:
        state["rank_rng"] = rank_rng
    with atomic_file(path) as tmp:
        torch.save(state, tmp)
