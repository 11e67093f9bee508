"""Data-parallel training: 2 gloo processes (torch.multiprocessing spawn, env set as torchrun
sets it) on a tiny hyperprior. Ranks stay identical after every step, entropy models
included; 2 ranks x batch b give the loss and gradients of 1 process x batch 2b; the
checkpoint loads with the normal loader; an interrupted run resumes at the same step."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp

from compressor import checkpoint, distributed
from compressor.errors import RecipeError
from tests.conftest import write_images

WORLD, B = 2, 2
SMALL = {"crop": 64, "val_crop": 64, "batch_size": 1, "val_fraction": 0.25, "threads": 1}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _fixed_noise(self: Any, inputs: torch.Tensor, mode: str, means: Any = None) -> torch.Tensor:
    """The entropy models' training noise as a function of the value alone, so a sample gets
    the same noise whichever rank (and batch position) it lands on."""
    if mode != "noise":
        return _QUANTIZE(self, inputs, mode, means)
    return inputs + (torch.frac(inputs.detach() * 97.13).abs() - 0.5)


_QUANTIZE: Any = None


def _first_step(rank: int, tmp: Path) -> None:
    """One step of DDP on this rank's half of a batch of 2B; rank 0 also takes the same step
    in one plain process on the whole batch."""
    from compressai.entropy_models import EntropyModel

    from compressor.train import TrainConfig, _Trainer, rd_loss
    from tests.conftest import tiny_model

    global _QUANTIZE
    _QUANTIZE = EntropyModel.quantize
    EntropyModel.quantize = _fixed_noise  # type: ignore[method-assign]
    cfg = TrainConfig(clip_max_norm=0, **SMALL)
    batch = torch.rand(WORLD * B, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    group = distributed.setup()

    def step(trainer: _Trainer, x: torch.Tensor) -> dict[str, Any]:
        logs, _ = trainer.group.reduce_logs(trainer.train_step(x), 0.0)
        grads = {
            n: p.grad.clone() for n, p in trainer.model.net.named_parameters() if p.grad is not None
        }
        return {"loss": logs["loss"], "grads": grads}

    ddp = _Trainer(tiny_model(seed=0), cfg, rd_loss(cfg.lmbda), group)
    ddp.wrap()
    out = {"ddp": step(ddp, batch[rank * B : (rank + 1) * B])}
    if rank == 0:
        out["single"] = step(_Trainer(tiny_model(seed=0), cfg, rd_loss(cfg.lmbda)), batch)
    EntropyModel.quantize = _QUANTIZE  # type: ignore[method-assign]
    torch.save(out, tmp / f"first_step{rank}.pt")


def _train_runs(rank: int, tmp: Path) -> None:
    """3 steps straight (each rank starts from other random weights); 2 steps then a resumed
    run to 3. The state after every step is recorded."""
    from compressor import train as train_mod
    from compressor.data import load_folder
    from tests.conftest import tiny_model

    after_step: list[dict[str, torch.Tensor]] = []
    original = train_mod._Trainer.train_step

    def recording(self: Any, batch: torch.Tensor) -> dict[str, float]:
        logs = original(self, batch)
        after_step.append({k: v.clone() for k, v in self.model.state_dict().items()})
        return logs

    train_mod._Trainer.train_step = recording  # type: ignore[method-assign]
    images = load_folder(tmp / "images")
    cfg = train_mod.TrainConfig(max_steps=3, eval_every=1, lr=1e-2, aux_lr=1e-1, **SMALL)
    kw: dict[str, Any] = {"allow_oversubscribe": True}
    straight = train_mod.train(tiny_model(seed=rank), images, cfg, tmp / "a.pt", **kw)
    short = cfg.model_copy(update={"max_steps": 2})
    first = train_mod.train(tiny_model(seed=rank), images, short, tmp / "b.pt", **kw)
    resumed_model = tiny_model(seed=rank)
    second = train_mod.train(resumed_model, images, cfg, tmp / "b.pt", **kw)
    out = {
        "after_step": after_step,
        "steps": (straight.steps, first.steps, second.steps),
        "history": [h["step"] for h in second.history],
        "final": resumed_model.state_dict(),
    }
    torch.save(out, tmp / f"train{rank}.pt")


def _worker(rank: int, port: int, tmp: Path) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        LOCAL_WORLD_SIZE=str(WORLD),
    )
    torch.set_num_threads(1)
    _first_step(rank, tmp)
    _train_runs(rank, tmp)


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("ddp")
    write_images(tmp / "images", [(96, 128), (128, 96), (112, 144), (96, 96)])
    mp.spawn(_worker, args=(_free_port(), tmp), nprocs=WORLD, join=True)
    return tmp


def test_two_ranks_of_b_give_the_loss_and_gradients_of_one_process_of_2b(ddp_runs: Path) -> None:
    r0, r1 = (torch.load(ddp_runs / f"first_step{r}.pt") for r in range(WORLD))
    single = r0["single"]
    # within 1e-5, relative for values above 1: the loss is ~90 and some gradients ~90, where
    # an absolute 1e-5 is one float32 ulp and summing 2+2 instead of 4 samples moves a few
    assert abs(r0["ddp"]["loss"] - single["loss"]) <= 1e-5 * max(1.0, abs(single["loss"]))
    assert r1["ddp"]["loss"] == r0["ddp"]["loss"]
    assert set(r0["ddp"]["grads"]) == set(single["grads"])
    assert len(single["grads"]) > 20
    for name, g in single["grads"].items():
        scale = max(1.0, float(g.abs().max()))
        assert float((r0["ddp"]["grads"][name] - g).abs().max()) <= 1e-5 * scale, name
        assert torch.equal(r0["ddp"]["grads"][name], r1["ddp"]["grads"][name]), name


def test_every_parameter_is_identical_on_both_ranks_after_every_step(ddp_runs: Path) -> None:
    r0, r1 = (torch.load(ddp_runs / f"train{r}.pt") for r in range(WORLD))
    assert len(r0["after_step"]) == len(r1["after_step"]) == 3 + 2 + 1
    for s0, s1 in zip(r0["after_step"], r1["after_step"], strict=True):
        assert s0.keys() == s1.keys()
        assert all(torch.equal(s0[k], s1[k]) for k in s0), "ranks differ"
    quantiles = [k for k in r0["after_step"][0] if k.endswith(".quantiles")]
    assert quantiles  # the entropy bottleneck's, trained by the aux optimizer
    first, third = r0["after_step"][0], r0["after_step"][2]
    assert all(not torch.equal(first[k], third[k]) for k in quantiles)


def test_the_checkpoint_loads_with_the_normal_loader(ddp_runs: Path) -> None:
    model = checkpoint.load(ddp_runs / "a.pt")
    raw = checkpoint.safe_load(ddp_runs / "a.pt")
    assert not any(k.startswith("module.") for k in raw["state_dict"])
    assert model.meta["train"]["steps"] == 3
    assert model.meta["train"]["processes"] == WORLD


def test_an_interrupted_run_resumes_at_the_same_step(ddp_runs: Path) -> None:
    r0, r1 = (torch.load(ddp_runs / f"train{r}.pt") for r in range(WORLD))
    assert r0["steps"] == r1["steps"] == (3, 2, 3)
    assert r0["history"] == [1, 2, 3]
    straight = checkpoint.load(ddp_runs / "a.pt").state_dict()
    resumed = checkpoint.load(ddp_runs / "b.pt").state_dict()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    assert all(torch.equal(r0["final"][k], r1["final"][k]) for k in r0["final"])


def test_more_processes_than_cores_is_refused_unless_allowed() -> None:
    cores = distributed.available_cores()
    with pytest.raises(RecipeError, match=r"allowed processes x threads <= \d+"):
        distributed.check_cores(cores + 1, None, False, "--processes")
    assert distributed.check_cores(cores + 1, None, True, "--processes") == 1
    assert distributed.check_cores(1, None, False, "--processes") == cores


def test_without_torchrun_there_is_no_group(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in distributed.TORCHRUN_ENV:
        monkeypatch.delenv(key, raising=False)
    group = distributed.setup()
    assert (group.rank, group.world, group.enabled) == (0, 1, False)
