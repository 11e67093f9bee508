"""Data-parallel fine-tune throughput, side by side in one run: 1 process x 2 threads against
2 processes x 1 thread (torchrun + DDP, gloo) with the same global batch; on a machine with
CUDA GPUs also torchrun on 1 GPU against all of them (nccl).

Both sides run the library's own train loop on the bundled q2 hyperprior (N=128, M=192);
samples/s is timed between the progress callbacks of the steps after a warm-up, so process
start-up and the held-out evaluation are left out. The two sides run one after the other
(a torchrun start costs tens of seconds here), not interleaved: on a busy machine repeat it.

    uv run --frozen python bench/ddp.py [--steps 8 --batch 4 --crop 128]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from compressor.threads import set_wait_policy  # noqa: E402

set_wait_policy()  # as the CLI does: idle OpenMP threads sleep (torch is not loaded yet)

WARMUP = 2


class Clock:
    """A Reporter that notes when each training step ends."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def start(self, description: str, total: int | None) -> None:
        pass

    def advance(self, n: int = 1, **fields: float | str) -> None:
        if fields:  # the initial advance(step) of a resumed run carries no fields
            self.stamps.append(time.perf_counter())

    def finish(self) -> None:
        pass


def run_training(args: argparse.Namespace, global_batch: int, threads: int) -> float | None:
    """Samples/s of the steps after the warm-up (None on ranks other than 0)."""
    from compressor import checkpoint
    from compressor.data import load_images
    from compressor.distributed import setup
    from compressor.train import TrainConfig, train

    world = setup().world
    model = checkpoint.load(
        Path(__file__).resolve().parents[1] / "compressor/assets/bmshj2018-hyperprior-q2.pt"
    )
    images = [rgb for _, rgb in load_images("skimage")]
    cfg = TrainConfig(
        crop=args.crop, val_crop=64, batch_size=global_batch // world, val_fraction=0.2,
        max_steps=WARMUP + args.steps, eval_every=10**6, threads=threads,
    )  # fmt: skip
    clock = Clock()
    with tempfile.TemporaryDirectory() as tmp:
        train(model, images, cfg, Path(tmp) / "m.pt", resume=False, reporter=clock)
    if not clock.stamps:
        return None
    timed = clock.stamps[WARMUP - 1 :]
    return global_batch * (len(timed) - 1) / (timed[-1] - timed[0])


def torchrun(args: argparse.Namespace, procs: int, threads: int) -> float:
    """Samples/s of this script's worker under torchrun on `procs` processes."""
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={procs}", __file__, "--worker", str(result),
               "--steps", str(args.steps), "--batch", str(args.batch), "--crop", str(args.crop),
               "--threads", str(threads)]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        subprocess.run(cmd, env=env, check=True)
        return float(json.loads(result.read_text())["samples_per_s"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=8, help="timed steps after the warm-up")
    ap.add_argument("--batch", type=int, default=4, help="global batch (split over processes)")
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:  # one torchrun worker; rank 0 writes the number
        rate = run_training(args, args.batch, args.threads)
        if rate is not None:
            Path(args.worker).write_text(json.dumps({"samples_per_s": rate}))
        return
    import torch

    torch.set_num_threads(2)
    one = run_training(args, args.batch, threads=2)
    two = torchrun(args, procs=2, threads=1)
    assert one is not None
    print(f"fine-tune, bundled q2 hyperprior, global batch {args.batch} x {args.crop}px crops, "
          f"{args.steps} timed steps")  # fmt: skip
    print(f"  1 process  x 2 threads: {one:7.2f} samples/s")
    print(f"  2 processes x 1 thread: {two:7.2f} samples/s   (DDP, gloo)")
    print(f"  ratio 2x1 / 1x2: {two / one:.2f}")
    gpus = torch.cuda.device_count()
    if gpus:
        g1, gn = torchrun(args, 1, 1), torchrun(args, gpus, 1)
        print(f"  1 GPU: {g1:.2f} samples/s; {gpus} GPUs: {gn:.2f} samples/s (nccl); "
              f"ratio {gn / g1:.2f}")  # fmt: skip
    else:
        print("  no CUDA GPU here: the 1-vs-N GPU comparison was not run")


if __name__ == "__main__":
    main()
