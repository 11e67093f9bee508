"""One trial: a materialised recipe run through the pipeline in its own run folder, its
measures read from the validate step's report, its result cached under a content hash.

The cache key covers everything the result depends on: the trial's recipe (choices set), the
model file's bytes (every member's, for a family), the image sources' files and the package
versions. A finished key is never run again; a key whose run was killed resumes in its own
folder (the pipeline keeps the steps that finished). Beside it, <search>/cache/sensitivity
holds the quantize step's per-graph sensitivity rows under their own content hash
(compressor.quant.rank_cache), so trials that differ only in keep_float_top_k rank once, and
<search>/cache/steps the finished prune / fine-tune / distill steps under their step
fingerprint (compressor.step_cache), so trials that share them fine-tune once.

A family trial (the recipe's model a list or a glob) runs every member and is judged by
BD-rate; measure_family says how its members' figures make one outcome.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import statistics
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compressor import pipeline
from compressor.artifact import sha256, versions
from compressor.families.members import expand, is_family
from compressor.fsutil import write_text
from compressor.progress import Reporter
from compressor.quant.rank_cache import ranking_cache
from compressor.recipe import BUNDLED, parse_recipe
from compressor.search.confidence import bounded_gates
from compressor.step_cache import shared_steps
from compressor.validate import GATE_RULES

log = logging.getLogger(__name__)

#: a constraint that could not be measured counts as violated by this much
UNMEASURED = 1e6
OBJECTIVE_KEYS = {
    "total_latency": ("encode_ms", "decode_ms"),
    "encode_latency": ("encode_ms",),
    "decode_latency": ("decode_ms",),
}


@dataclass
class Outcome:
    """What a finished trial measured (or why it failed)."""

    latency: float | None = None  # candidate / baseline time of the objective (1.0 = same)
    latency_ms: float | None = None
    quality_loss: float | None = None  # PSNR drop, dB
    bpp_increase: float | None = None
    size_mb: float | None = None
    gates: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    #: a family trial: BD-rate of the candidate family vs the baseline family, %
    bd_rate_psnr: float | None = None
    bd_rate_ms_ssim: float | None = None
    #: measured one-shot only: the screen stopped it before its fine-tuning
    screened: bool = False

    @property
    def feasible(self) -> bool:
        return self.error is None and not self.screened and all(g["passed"] for g in self.gates)

    def constraints(self) -> dict[str, float]:
        """Gate -> Optuna's constraint value: <= 0 means that constraint holds."""
        return {g["gate"]: min(violation(g), UNMEASURED) for g in self.gates}

    def violation(self) -> float:
        """Summed violations, each relative to its limit: how far from feasible."""
        if self.error is not None:
            return UNMEASURED
        return sum(max(0.0, violation(g)) / max(abs(g["limit"]), 1e-6) for g in self.gates)

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "feasible": self.feasible}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Outcome:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def violation(gate: dict[str, Any]) -> float:
    value = gate["value"]
    if value is None:
        return UNMEASURED
    upper = GATE_RULES[gate["gate"]][1]
    return float(value - gate["limit"] if upper else gate["limit"] - value)


def cache_key(raw: dict[str, Any], model: Path, sources: list[str]) -> str:
    """The trial's identity; a family's key covers every member's bytes (a glob's matches
    read again, so a member added to the folder is another family)."""
    trial = {k: v for k, v in raw.items() if k not in ("name", "output")}
    spec = raw.get("model")
    if isinstance(spec, str | list) and is_family(spec):
        paths = expand(spec, (BUNDLED, pipeline.BUNDLED_MODEL))
        models: Any = {str(p): sha256(p) for p in paths}
    else:
        models = sha256(model)
    parts = {
        "recipe": trial,
        "model": models,
        "data": {s: pipeline.data_fingerprint(s) for s in sorted(set(sources))},
        "versions": versions(),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


class Cache:
    """<search>/cache/<key>.json: {folder, params, status, outcome}."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def get(self, key: str) -> dict[str, Any] | None:
        try:
            data = json.loads((self.folder / f"{key}.json").read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def put(self, key: str, entry: dict[str, Any]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        write_text(self.folder / f"{key}.json", json.dumps(entry, indent=2, default=str) + "\n")


def rankings(search: Path) -> Path:
    """Where a search's trials share their sensitivity rankings (compressor.quant.rank_cache):
    trials that differ only in keep_float_top_k rank each graph once."""
    return search / "cache" / "sensitivity"


@contextlib.contextmanager
def shared_work(search: Path) -> Iterator[None]:
    """What the runs of a search share, open around each: the sensitivity rankings and the
    finished expensive steps (compressor.step_cache). The final check runs inside it too, so
    it checks the chosen trial's own fine-tuned model, not a second fine-tune of it."""
    with ranking_cache(rankings(search)), shared_steps(search / "cache" / "steps"):
        yield


def run_trial(
    raw: dict[str, Any],
    folder: Path,
    objective: str,
    reporter: Reporter,
    confidence: float = 0.0,
) -> Outcome:
    """Run one trial recipe into `folder` (resuming it if a killed search left it there).
    `folder` is <search>/trials/NAME: the search's ranking cache is open while it runs."""
    recipe = parse_recipe(raw, f"trial {folder.name}")
    resume = folder.is_dir() and any(folder.iterdir())
    p = pipeline.plan(recipe, folder, source=f"trial {folder.name}", raw=raw, resume=resume)
    with shared_work(folder.parent.parent):
        result = pipeline.run(p, reporter)
    return measure(result, objective, confidence)


def measure(result: pipeline.RunResult, objective: str, confidence: float = 0.0) -> Outcome:
    """The objective and constraint values of a finished run, from its last validate report
    (a family run: from its members' and its family report, measure_family)."""
    if result.members or result.failed_members:
        return measure_family(result, objective, confidence)
    checks = [a for a in result.artifacts if a.step == "validate"]
    if not checks:
        return Outcome(error="the run stopped before its validate step")
    report = json.loads((Path(checks[-1].path) / "report.json").read_text())
    base, cand = report["baseline"], report["candidate"]
    keys = OBJECTIVE_KEYS[objective]
    base_ms = sum(base.get(k) or 0.0 for k in keys)
    cand_ms = sum(cand.get(k) or 0.0 for k in keys)
    model = next((a for a in result.artifacts if a.id == checks[-1].parent), None)
    size = sum_bytes(Path(model.path)) / 1e6 if model is not None else None
    deltas = report["deltas"]
    return Outcome(
        latency=cand_ms / base_ms if base_ms > 0 else None,
        latency_ms=cand_ms,
        quality_loss=deltas.get("psnr_drop_db"),
        bpp_increase=deltas.get("bpp_increase"),
        size_mb=size,
        gates=bounded_gates(report, confidence),
    )


def sum_bytes(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size if path.exists() else 0


def measure_family(result: pipeline.RunResult, objective: str, confidence: float = 0.0) -> Outcome:
    """A family trial as one outcome: latency (and latency_ms) the mean over the members of
    each member's candidate / baseline time of the objective; quality loss, bpp increase and
    every single-model gate the worst member's; size the mean member's; the BD-rate gates
    and figures from the family's judgement (compressor.families.judge). A failed member
    makes the trial an error (it is not a whole family), its figures still recorded."""
    members = {name: measure(run, objective, confidence) for name, run in result.members.items()}
    done = [o for o in members.values() if o.error is None]
    family = json.loads((Path(result.final.path) / "report.json").read_text())
    head = family.get("bd", {}).get("candidate vs baseline", {})
    errors = [f"{name}: {e}" for name, e in result.failed_members.items()]
    errors += [f"{name}: {o.error}" for name, o in members.items() if o.error]
    return Outcome(
        latency=_mean([o.latency for o in done]),
        latency_ms=_mean([o.latency_ms for o in done]),
        quality_loss=_worst([o.quality_loss for o in done]),
        bpp_increase=_worst([o.bpp_increase for o in done]),
        size_mb=_mean([o.size_mb for o in done]),
        gates=worst_gates([o.gates for o in done]) + list(family.get("gates") or []),
        error=f"family member(s) failed: {'; '.join(errors)}"[:300] if errors else None,
        bd_rate_psnr=head.get("bd_rate_psnr"),
        bd_rate_ms_ssim=head.get("bd_rate_ms_ssim"),
    )


def _mean(values: list[float | None]) -> float | None:
    got = [v for v in values if v is not None]
    return statistics.fmean(got) if got and len(got) == len(values) else None


def _worst(values: list[float | None]) -> float | None:
    got = [v for v in values if v is not None]
    return max(got) if got and len(got) == len(values) else None


def worst_gates(per_member: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Each single-model gate once, as its worst member saw it (unmeasured is worst); it
    passes when every member passed it."""
    rows: dict[str, dict[str, Any]] = {}
    for gates in per_member:
        for g in gates:
            seen = rows.get(g["gate"])
            if seen is None or violation(g) > violation(seen):
                rows[g["gate"]] = dict(g)
    for name, row in rows.items():
        row["passed"] = all(g["passed"] for gates in per_member for g in gates if g["gate"] == name)
    return list(rows.values())
