"""The family report: report.json (every number), report.md (the same numbers as tables),
rd.png and rd_msssim.png (RD curves of every codec), speed.png (speed against BD-rate)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from compressor.families.judge import Judgement
from compressor.report import md_table, plot_curves, plot_speed, write_json, write_markdown

BD_KEYS = ("bd_rate_psnr", "bd_rate_ms_ssim", "bd_psnr")
MEMBER_COLUMNS = ["member", "side", "bpp", "PSNR dB", "MS-SSIM", "SSIM", "enc ms", "dec ms"]


def verdict_line(j: Judgement) -> str:
    if j.passed:
        return "PASSED"
    why = []
    if j.failed_members:
        why.append(f"member(s) failed: {', '.join(j.failed_members)}")
    if any(not m["passed"] for m in j.members if m["error"] is None):
        why.append("a member's own gates failed")
    if any(not g["passed"] for g in j.gates):
        why.append(f"gates failed: {', '.join(g['gate'] for g in j.gates if not g['passed'])}")
    return "FAILED (" + "; ".join(why) + ")"


def title_bd(j: Judgement) -> str:
    head = j.headline()
    parts = []
    for key, name in (("bd_rate_psnr", "BD-rate PSNR"), ("bd_rate_ms_ssim", "MS-SSIM")):
        value = head.get(key)
        parts.append(f"{name} {value:+.2f}%" if value is not None else f"{name} n/a")
    return "candidate vs baseline family: " + ", ".join(parts) + f" ({j.method})"


def member_table(j: Judgement) -> str:
    rows: list[list[Any]] = []
    for m in j.members:
        if m["error"] is not None:
            rows.append([m["member"], "failed: " + m["error"], *[None] * 6])
            continue
        for side in ("baseline", "candidate"):
            p = m[side]
            keys = ("bpp", "psnr", "ms_ssim", "ssim", "encode_ms", "decode_ms")
            rows.append([m["member"], side, *[p[k] for k in keys]])
    return md_table(MEMBER_COLUMNS, rows)


def curve_table(j: Judgement) -> str:
    rows = [
        [name, p["label"], p["bpp"], p["psnr"], p["ms_ssim"], p["encode_ms"], p["decode_ms"]]
        for name, c in j.curves.items()
        for p in c.points
    ]
    return md_table(["codec", "point", "bpp", "PSNR dB", "MS-SSIM", "enc ms", "dec ms"], rows)


def bd_table(j: Judgement) -> str:
    rows = [[tag, *[v.get(k) for k in BD_KEYS]] for tag, v in j.bd.items()]
    table = md_table(["test vs anchor", "BD-rate PSNR %", "BD-rate MS-SSIM %", "BD-PSNR dB"], rows)
    notes = [f"- {tag}: {text}" for tag, text in j.notes.items()]
    return "\n".join([table, "", *notes]) if notes else table


def speed_points(j: Judgement) -> dict[str, tuple[float, float]]:
    points = (
        {"baseline": (j.curves["baseline"].mean_ms(), 0.0)} if j.curves["baseline"].points else {}
    )
    for name, curve in j.curves.items():
        bd = j.bd.get(f"{name} vs baseline", {}).get("bd_rate_psnr")
        if name != "baseline" and bd is not None and curve.points:
            points[name] = (curve.mean_ms(), bd)
    return points


def write_family_report(folder: Path, j: Judgement, title: str) -> None:
    gates = [[g["gate"], g["limit"], g["value"], g["passed"]] for g in j.gates]
    write_json(
        folder / "report.json",
        {
            "title": title,
            "passed": j.passed,
            "verdict": verdict_line(j),
            "bd_method": j.method,
            "gates": j.gates,
            "bd": j.bd,
            "notes": j.notes,
            "failed_members": {m["member"]: m["error"] for m in j.members if m["error"]},
            "members": j.members,
            "curves": {name: c.points for name, c in j.curves.items()},
            "speed": {k: {"ms": v[0], "bd_rate_psnr": v[1]} for k, v in speed_points(j).items()},
        },
    )
    sections = [
        ("Verdict", verdict_line(j)),
        (
            "BD-rate gates",
            md_table(["gate", "limit", "value", "passed"], gates) if gates else "none set",
        ),
        (f"BD values ({j.method} interpolation; negative BD-rate: fewer bits)", bd_table(j)),
        ("Members (means over images)", member_table(j)),
        ("RD points of every codec", curve_table(j)),
    ]
    write_markdown(folder / "report.md", title, sections)
    _plots(folder, j)


def _plots(folder: Path, j: Judgement) -> None:
    title = title_bd(j)
    psnr = {n: (c.values("bpp"), c.values("psnr")) for n, c in j.curves.items() if c.has("psnr")}
    families = ("baseline", "candidate")
    plot_curves(folder / "rd.png", psnr, "PSNR (dB, RGB)", title, families)
    msssim = {
        n: (c.values("bpp"), c.values("ms_ssim_db"))
        for n, c in j.curves.items()
        if c.has("ms_ssim_db")
    }
    if msssim:
        ylabel = "MS-SSIM (dB: -10 log10(1 - MS-SSIM))"
        plot_curves(folder / "rd_msssim.png", msssim, ylabel, title, families)
    plot_speed(folder / "speed.png", speed_points(j), "speed against BD-rate; " + title)
