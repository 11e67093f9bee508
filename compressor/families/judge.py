"""Judge a family: the members' validations as two RD curves (baseline family, candidate
family), their BD values, the classical codecs on the same images, and the BD-rate gates.

Every member's validate step measured its baseline and its candidate on the same images in
one process (compressor.compare, latency interleaved); a curve point is one member's means
(bpp, PSNR, SSIM, MS-SSIM, encode / decode ms), as CompressAI's curves average per image.
Nothing is measured twice: this module reads those reports and measures only the Pillow
JPEG / WebP sweeps (compressor.baselines), on the same images.

Verdict: the family passes when every member finished, every member's own gates passed, and
the BD-rate gates pass. A member that failed (its error is reported) fails the verdict (exit
1) but costs no other member; its points are left out of the curves. BD values of the
baseline against the candidate family that cannot be computed because the curves share too
little of their range are a DataError (exit 2), never an extrapolated number, when it is the
BD-rate in PSNR (the headline); a secondary value (BD-rate in MS-SSIM, BD-PSNR, any value
against JPEG / WebP) is left out with a note saying why, and a gate on it fails.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from compressor.compare import Images
from compressor.errors import DataError
from compressor.metrics.bdrate import MIN_POINTS, bd_quality, bd_rate, ms_ssim_db
from compressor.progress import Reporter
from compressor.validate import Gates, apply_gates

POINT_KEYS = ("bpp", "psnr", "ssim", "ms_ssim", "encode_ms", "decode_ms")
#: (test, anchor) pairs reported; the first is the one the gates judge
PAIRS = (
    ("candidate", "baseline"),
    ("jpeg", "baseline"),
    ("webp", "baseline"),
    ("candidate", "jpeg"),
    ("candidate", "webp"),
)


@dataclass
class Curve:
    """One codec's RD points (a member or a quality setting each), in increasing bpp."""

    codec: str
    points: list[dict[str, Any]]

    def values(self, key: str) -> list[float]:
        if key == "ms_ssim_db":
            return [ms_ssim_db(p["ms_ssim"]) for p in self.points]
        return [float(p[key]) for p in self.points]

    def has(self, key: str) -> bool:
        base = "ms_ssim" if key == "ms_ssim_db" else key
        return bool(self.points) and all(p.get(base) is not None for p in self.points)

    def mean_ms(self) -> float:
        """Mean encode + decode ms per image over the curve's points."""
        return statistics.fmean(p["encode_ms"] + p["decode_ms"] for p in self.points)


@dataclass
class Judgement:
    members: list[dict[str, Any]]
    curves: dict[str, Curve]
    #: "test vs anchor" -> {bd_rate_psnr, bd_rate_ms_ssim, bd_psnr}; None where not computable
    bd: dict[str, dict[str, float | None]]
    #: why a BD value is missing, by "test vs anchor / metric"
    notes: dict[str, str] = field(default_factory=dict)
    gates: list[dict[str, Any]] = field(default_factory=list)
    method: str = "pchip"

    @property
    def failed_members(self) -> list[str]:
        return [m["member"] for m in self.members if m["error"] is not None]

    @property
    def passed(self) -> bool:
        members_ok = all(m["error"] is None and m["passed"] for m in self.members)
        return members_ok and all(g["passed"] for g in self.gates)

    def headline(self) -> dict[str, float | None]:
        return self.bd.get("candidate vs baseline", {})


def _point(label: str, summary: dict[str, Any]) -> dict[str, Any]:
    return {"label": label, **{k: summary.get(k) for k in POINT_KEYS}}


def member_rows(
    names: list[str], reports: dict[str, dict[str, Any] | None], errors: dict[str, str]
) -> list[dict[str, Any]]:
    """One row per member: its error, or its validation's baseline / candidate means."""
    rows = []
    for name in names:
        report = reports.get(name)
        error = errors.get(name)
        if error is None and report is None:
            error = "stopped before its validate step (an earlier gate failed)"
        rows.append(
            {
                "member": name,
                "error": error,
                "passed": bool(report and report.get("passed")),
                "baseline": _point(name, report["baseline"]) if report else None,
                "candidate": _point(name, report["candidate"]) if report else None,
                "deltas": report.get("deltas") if report else None,
            }
        )
    return rows


def bracket(curve: Curve, key: str, lo: float, hi: float) -> Curve:
    """The points of a wide sweep (JPEG q5..q95) that span [lo, hi] in `key`: the last at
    or below lo to the first at or above hi, widened to MIN_POINTS; a BD over the whole sweep
    would average over qualities the family never reaches."""
    pts = sorted(curve.points, key=lambda p: _value(p, key))
    vals = [_value(p, key) for p in pts]
    start = max([i for i, v in enumerate(vals) if v <= lo], default=0)
    stop = min([i for i, v in enumerate(vals) if v >= hi], default=len(pts) - 1)
    while stop - start + 1 < MIN_POINTS and (start > 0 or stop < len(pts) - 1):
        if stop < len(pts) - 1:
            stop += 1
        if stop - start + 1 < MIN_POINTS and start > 0:
            start -= 1
    return Curve(curve.codec, pts[start : stop + 1])


def _value(point: dict[str, Any], key: str) -> float:
    return ms_ssim_db(point["ms_ssim"]) if key == "ms_ssim_db" else float(point[key])


def bd_values(
    test: Curve, anchor: Curve, method: str, min_overlap: float
) -> tuple[dict[str, float | None], dict[str, str]]:
    """BD-rate (PSNR, MS-SSIM dB) and BD-PSNR of test vs anchor, and why any is missing
    (a reference sweep is cut to the other curve's range first)."""
    out: dict[str, float | None] = {}
    why: dict[str, str] = {}
    for name, key in (
        ("bd_rate_psnr", "psnr"),
        ("bd_rate_ms_ssim", "ms_ssim_db"),
        ("bd_psnr", "psnr"),
    ):
        out[name] = None
        if not (test.has(key) and anchor.has(key)):
            why[name] = "MS-SSIM undefined (images under 161 px on a side)"
            continue
        t, a = _cut(test, anchor, key)
        args = (a.values("bpp"), a.values(key), t.values("bpp"), t.values(key))
        try:
            if name == "bd_psnr":
                out[name] = bd_quality(*args, method=method, min_overlap=min_overlap)
            else:
                axis = "PSNR" if key == "psnr" else "MS-SSIM (dB)"
                out[name] = bd_rate(*args, method=method, min_overlap=min_overlap, quality=axis)
        except DataError as e:
            why[name] = str(e)
    return out, why


def _cut(test: Curve, anchor: Curve, key: str) -> tuple[Curve, Curve]:
    families = ("baseline", "candidate")
    if anchor.codec not in families:
        vals = test.values(key)
        anchor = bracket(anchor, key, min(vals), max(vals))
    if test.codec not in families:
        vals = anchor.values(key)
        test = bracket(test, key, min(vals), max(vals))
    return test, anchor


def reference_curves(
    kinds: list[str], images: Images, threads: int | None, reporter: Reporter | None
) -> dict[str, Curve]:
    """Pillow JPEG / WebP swept over quality on the same images, timed like every codec."""
    from compressor.baselines import timed_sweep

    return {
        kind: Curve(kind, timed_sweep(images, kind, threads=threads, reporter=reporter))
        for kind in kinds
    }


def judge_family(
    names: list[str],
    reports: dict[str, dict[str, Any] | None],
    errors: dict[str, str],
    images: Images,
    params: Any,
    *,
    threads: int | None = None,
    reporter: Reporter | None = None,
) -> Judgement:
    """Curves, BD values and gates of a family run (see the module docstring)."""
    members = member_rows(names, reports, errors)
    done = [m for m in members if m["baseline"] is not None]
    curves = {
        side: Curve(side, sorted((m[side] for m in done), key=lambda p: p["bpp"]))
        for side in ("baseline", "candidate")
    }
    j = Judgement(members, curves, {}, method=params.bd_method)
    for test, anchor in PAIRS:
        if (test, anchor) == PAIRS[1]:  # the families are judged: now the classical codecs
            curves.update(reference_curves(list(params.references), images, threads, reporter))
        if test not in curves or anchor not in curves:
            continue
        tag = f"{test} vs {anchor}"
        if len(curves["candidate"].points) < MIN_POINTS:
            j.notes[tag] = f"only {len(done)} members finished; BD needs {MIN_POINTS}"
            j.bd[tag] = {"bd_rate_psnr": None, "bd_rate_ms_ssim": None, "bd_psnr": None}
            continue
        values, why = bd_values(curves[test], curves[anchor], params.bd_method, params.min_overlap)
        if (test, anchor) == PAIRS[0] and "bd_rate_psnr" in why:
            # the family's headline number: without it there is no verdict, only an error
            raise DataError(f"candidate vs baseline family: {why['bd_rate_psnr']}")
        j.bd[tag] = values
        j.notes.update({f"{tag} / {name}": text for name, text in why.items()})
    gates: Gates = params.gates
    j.gates = apply_gates(gates, dict(j.headline()), family=True)
    return j
