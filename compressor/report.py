"""Reports: report.json (everything), report.md (tables for people), and plots (matplotlib)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from compressor.fsutil import atomic_file, write_text


def _clean(value: Any) -> Any:
    """JSON has no inf/nan: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)


def md_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "| " + " | ".join(columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join([head, rule, *body])


def write_json(path: Path, data: dict[str, Any]) -> None:
    write_text(path, json.dumps(_clean(data), indent=2, sort_keys=False) + "\n")


def write_markdown(path: Path, title: str, sections: Sequence[tuple[str, str]]) -> None:
    parts = [f"# {title}", ""]
    for heading, body in sections:
        parts += [f"## {heading}", "", body, ""]
    write_text(path, "\n".join(parts))


EVAL_COLUMNS = ("image", "bpp", "psnr", "ssim", "ms_ssim", "bytes", "encode_ms", "decode_ms")


def eval_rows(rows: Sequence[dict[str, Any]]) -> list[list[Any]]:
    return [[r.get(c) for c in EVAL_COLUMNS] for r in rows]


def plot_rd(
    path: Path,
    series: dict[str, tuple[Sequence[float], Sequence[float]]],
    ylabel: str = "PSNR (dB)",
) -> None:
    """Per-image bpp vs quality, one marker set per codec."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    for name, (xs, ys) in series.items():
        ax.scatter(xs, ys, label=name, s=18)
    ax.set_xlabel("bits per pixel (real bitstream)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def _figure() -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(7, 4.5), dpi=110)


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


#: the x range of a focused RD plot: this many times the focus curves' largest bpp
ZOOM = 1.6


def plot_curves(
    path: Path,
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    ylabel: str,
    title: str,
    focus: Sequence[str] = (),
) -> None:
    """RD curves: mean bpp against a quality, one line with markers per codec, in
    increasing bpp. `focus`: the curves the axes are sized to (the families); the others
    (JPEG / WebP swept to 3+ bpp) are drawn clipped, or the families would be a corner."""
    fig, ax = _figure()
    for name, (xs, ys) in curves.items():
        pairs = sorted(zip(xs, ys, strict=True))
        ax.plot([x for x, _ in pairs], [y for _, y in pairs], marker="o", ms=4, label=name)
    shown = [curves[n] for n in focus if n in curves]
    if shown:
        hi = ZOOM * max(max(xs) for xs, _ in shown)
        inside = [y for xs, ys in curves.values() for x, y in zip(xs, ys, strict=True) if x <= hi]
        pad = 0.05 * (max(inside) - min(inside) or 1.0)
        ax.set_xlim(0, hi)
        ax.set_ylim(min(inside) - pad, max(inside) + pad)
    ax.set_xlabel("bits per pixel (mean over images, real bitstreams)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)


def plot_speed(path: Path, points: dict[str, tuple[float, float]], title: str) -> None:
    """Speed against quality: each codec's mean encode + decode ms per image against its
    BD-rate vs the baseline family (0 for the baseline itself)."""
    fig, ax = _figure()
    for name, (ms, bd) in points.items():
        ax.scatter([ms], [bd], s=40, label=name)
        ax.annotate(name, (ms, bd), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("encode + decode ms per image (mean; log scale)")
    ax.set_ylabel("BD-rate vs baseline family, PSNR (%; lower is better)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)


def write_eval_report(folder: Path, result: Any, title: str) -> None:
    """report.json + report.md (+ rd.png) of an EvalResult."""
    summary = result.summary()
    write_json(
        folder / "report.json",
        {
            "title": title,
            "summary": summary,
            "images": result.rows,
            "complexity": result.complexity,
            "complexity_size": result.complexity_size,
        },
    )
    mean_row = [["mean", *[summary.get(c) for c in EVAL_COLUMNS[1:]]]]
    write_markdown(
        folder / "report.md",
        title,
        [
            (
                "Summary",
                md_table(
                    ["codec", "images", "bpp", "PSNR dB", "SSIM", "MS-SSIM", "threads"],
                    [
                        [
                            summary["codec"],
                            summary["images"],
                            summary["bpp"],
                            summary["psnr"],
                            summary["ssim"],
                            summary["ms_ssim"],
                            summary["threads"],
                        ]
                    ],
                ),
            ),
            ("Per image", md_table(EVAL_COLUMNS, eval_rows(result.rows) + mean_row)),
        ],
    )
    plot_rd(
        folder / "rd.png",
        {result.codec: ([r["bpp"] for r in result.rows], [r["psnr"] or 0.0 for r in result.rows])},
    )


def write_validation_report(folder: Path, v: Any, title: str) -> None:
    """report.json + report.md (+ rd.png): both codecs, deltas, gates."""
    b, c = v.baseline.summary(), v.candidate.summary()
    write_json(
        folder / "report.json",
        {
            "title": title,
            "passed": v.passed,
            "gates": v.gates,
            "deltas": v.deltas,
            "baseline": b,
            "candidate": c,
            "images": {"baseline": v.baseline.rows, "candidate": v.candidate.rows},
        },
    )
    keys = ("bpp", "psnr", "ssim", "ms_ssim", "encode_ms", "decode_ms")
    sections = [
        ("Verdict", "PASSED" if v.passed else "FAILED (see gates)"),
        (
            "Gates",
            md_table(
                ["gate", "limit", "value", "passed"],
                [[g["gate"], g["limit"], g["value"], g["passed"]] for g in v.gates],
            )
            if v.gates
            else "no gates set",
        ),
        (
            "Means",
            md_table(["codec", *keys], [[s["codec"], *[s[k] for k in keys]] for s in (b, c)]),
        ),
        ("Deltas (candidate vs baseline)", md_table(list(v.deltas), [list(v.deltas.values())])),
        ("Baseline per image", md_table(EVAL_COLUMNS, eval_rows(v.baseline.rows))),
        ("Candidate per image", md_table(EVAL_COLUMNS, eval_rows(v.candidate.rows))),
    ]
    write_markdown(folder / "report.md", title, sections)
    plot_rd(
        folder / "rd.png",
        {
            s.codec: ([r["bpp"] for r in s.rows], [r["psnr"] or 0.0 for r in s.rows])
            for s in (v.baseline, v.candidate)
        },
    )


def complexity_section(result: Any) -> list[tuple[str, str]]:
    if not result.complexity:
        return []
    h, w = result.complexity_size
    rows = [
        [
            r["component"],
            r["params"],
            r["macs"] / 1e9 if r["macs"] is not None else None,
            r["size_bytes"] / 1e6,
        ]
        for r in result.complexity
    ]
    return [
        (
            f"Components (MACs for one {h}x{w} image, padded as coded)",
            md_table(["component", "params", "GMACs", "size MB"], rows),
        )
    ]
