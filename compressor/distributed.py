"""Data-parallel training with PyTorch's own engines: torchrun + DistributedDataParallel.

One code path, two ways in. `torchrun --nproc_per_node N cli.py train ...` (add `--nnodes`
and a rendezvous endpoint for more machines) starts N copies of a training command with
WORLD_SIZE/RANK/LOCAL_RANK/MASTER_ADDR/MASTER_PORT set. `cli.py train --processes N` and a
recipe's `finetune` step with `processes: N` start that same torchrun themselves (`launch`),
on this module's worker entry (`python -m compressor.distributed SPEC.json`). Either way each
copy calls compressor.train.train, which asks `setup()` for its place in the group; without
torchrun's variables `setup()` answers "one process" and nothing changes.

What DDP's reducer does not cover, and this module does:
- the entropy models' `quantiles` are trained by the aux loss, outside the main loss: they
  are excluded from the reducer, every rank takes the (data-independent) aux step, and rank
  0's values are broadcast after it, so no float drift between ranks can accumulate;
- state outside `net` (hific's discriminator, trained by `extra_step`) is broadcast from rank 0
  after every step: the discriminator learns from rank 0's batches, the ranks stay identical;
- held-out evaluation and the early-stopping decision are rank 0's, broadcast to all ranks;
- the train loop's logs are averaged over ranks and carry rank 0's clock (one all-reduce a
  step), so every rank stops at the same step for a time budget too.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from compressor.errors import CompressorError, RecipeError
from compressor.models import CodecAdapter
from compressor.threads import available_cores

log = logging.getLogger(__name__)

#: set by torchrun in every worker; all present means "launched by torchrun"
TORCHRUN_ENV = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")

Forward = Callable[[torch.Tensor], tuple[torch.Tensor, dict[str, float]]]


def launched() -> bool:
    """True inside a worker that torchrun started (even a group of one: a GPU run then)."""
    return all(k in os.environ for k in TORCHRUN_ENV)


def check_cores(processes: int, threads: int | None, allow: bool, option: str) -> int:
    """Threads per process (given, or the cores shared out); processes x threads must fit in
    the cores this process may use unless `allow` (--allow-oversubscribe)."""
    cores = available_cores()
    per = threads or max(1, cores // processes)
    if processes * per > cores and not allow:
        raise RecipeError(
            f"{option} {processes} x {per} thread(s) needs {processes * per} cores; this "
            f"machine gives {cores}: allowed processes x threads <= {cores} "
            "(or pass --allow-oversubscribe)"
        )
    return per


@dataclass
class Group:
    """This process's place in the training group; the default is a single process."""

    rank: int = 0
    world: int = 1
    local_world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    #: in a torchrun group (DDP, collectives); False: one plain process, nothing changes
    enabled: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, model: CodecAdapter, loss_fn: Callable[..., Any]) -> Forward:
        """The training forward: `loss_fn(model, x)`, through DDP when there is a group."""
        if not self.enabled:
            return lambda x: loss_fn(model, x)
        module = _LossModule(model, loss_fn)
        aux = {id(p) for p in model.aux_parameters()}
        ignore = [n for n, p in module.named_parameters() if id(p) in aux]
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, ignore)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # find_unused_parameters: distillation's latent adapter or a GAN warm-up leave
            # parameters out of some losses; the graph walk is small beside the convolutions
            ddp = DistributedDataParallel(
                module,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True,
            )
        return ddp  # type: ignore[no-any-return]

    def sync_from_main(self, model: CodecAdapter, only_outside_reducer: bool = False) -> None:
        """Rank 0's values for every tensor of the model (at the start: each rank built or
        loaded its own), or only those DDP does not reduce (after every step)."""
        if not self.enabled:
            return
        state = model.state_dict()
        if only_outside_reducer:
            inside = set(model.net.state_dict())
            aux = {id(p) for p in model.aux_parameters()}
            named = dict(model.net.named_parameters())
            keep = {k for k in state if k not in inside or id(named.get(k)) in aux}
            state = {k: v for k, v in state.items() if k in keep}
        for value in state.values():
            if value.numel():
                dist.broadcast(value.data, 0)

    def reduce_logs(self, logs: dict[str, float], elapsed: float) -> tuple[dict, float]:
        """Logs averaged over ranks, and rank 0's elapsed time (the clock every rank obeys)."""
        if not self.enabled:
            return logs, elapsed
        keys = sorted(logs)
        values = [float(logs[k]) for k in keys] + [elapsed if self.is_main else 0.0]
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        out = t.tolist()
        return {k: v / self.world for k, v in zip(keys, out, strict=False)}, out[-1]

    def from_main(self, value: Any) -> Any:
        """Rank 0's `value` on every rank (a picklable object)."""
        if not self.enabled:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0, device=self.device)
        return box[0]

    def run_on_main(self, fn: Callable[[], Any]) -> Any:
        """`fn()` run by rank 0 alone; its result, or its CompressorError, reaches every rank."""
        result: Any = None
        error: CompressorError | None = None
        if self.is_main:
            try:
                result = fn()
            except CompressorError as e:
                error = e
        result, error = self.from_main((result, error))
        if error is not None:
            raise error
        return result

    def gather(self, value: Any) -> list[Any] | None:
        """Every rank's `value`, in rank order (None with one process)."""
        if not self.enabled:
            return None
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, value)
        return out

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


class _LossModule(nn.Module):
    """The whole loss as one module, so DDP's forward brackets everything a loss function
    runs (distillation calls the student and its adapters, not `forward_rd`)."""

    def __init__(self, model: CodecAdapter, loss_fn: Callable[..., Any]) -> None:
        super().__init__()
        self.net = model.net
        self.model, self.loss_fn = model, loss_fn

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        return self.loss_fn(self.model, x)  # type: ignore[no-any-return]


def setup() -> Group:
    """Join torchrun's process group once per process (gloo on CPU, nccl on GPU)."""
    if not launched():
        return Group()
    local_rank = int(os.environ["LOCAL_RANK"])
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if not dist.is_initialized():
        if cuda:
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if cuda else "gloo", init_method="env://")
        atexit.register(_teardown)
        if dist.get_rank() != 0:  # logs and progress come from rank 0 only
            logging.getLogger("compressor").setLevel(logging.WARNING)
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", dist.get_world_size()))
    return Group(dist.get_rank(), dist.get_world_size(), local_world, device, enabled=True)


def _teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


# -- launching torchrun from a command or a recipe step ---------------------------------------
def launch(spec: dict[str, Any], processes: int, threads: int) -> None:
    """Run `training.train_model(**spec)` in `processes` DDP workers on this machine.

    torchrun as a subprocess rather than torch.multiprocessing: the workers then start exactly
    as under a hand-typed torchrun (one code path, env-based init), torchrun's agent stops
    all workers when one fails, and nothing of this process (threads, models) is forked."""
    with tempfile.TemporaryDirectory(prefix="ddp-") as tmp:
        spec_file, error_file = Path(tmp) / "spec.json", Path(tmp) / "error.txt"
        spec_file.write_text(json.dumps({**spec, "error_file": str(error_file)}))
        root = str(Path(__file__).resolve().parents[1])
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        cmd += [f"--nproc_per_node={processes}", "-m", "compressor.distributed", str(spec_file)]
        code = subprocess.run(cmd, env=env, check=False).returncode
        if error_file.exists():
            raise RecipeError(error_file.read_text().strip())
        if code != 0:
            raise RuntimeError(f"torchrun exited with code {code}; its output says why")


def _worker(spec_path: str) -> int:
    """One torchrun worker: train as the spec says; a user error is written for the launcher."""
    from compressor.training import train_model

    spec = json.loads(Path(spec_path).read_text())
    error_file = Path(spec.pop("error_file"))
    for key in ("init_path", "data", "out"):
        spec[key] = Path(spec[key]) if spec.get(key) else None
    try:
        train_model(**spec)
    except CompressorError as e:
        if os.environ.get("RANK") == "0":
            error_file.write_text(str(e))
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1]))
