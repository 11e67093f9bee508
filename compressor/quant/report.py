"""report.json / report.md of a quantization (shared by the recipe step and the CLI)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from compressor.report import md_table, write_json, write_markdown

GRAPH_COLUMNS = ["graph", "convs", "int8", "float convs", "kept in float", "pre-process", "KB"]
SENS_COLUMNS = ["graph", "node", "GDN", "PSNR drop dB", "bpp increase"]
TRIAL_COLUMNS = ["trial", "kept in float", "PSNR drop dB", "bpp increase", "met"]


def graph_rows(report: dict[str, Any]) -> list[list[Any]]:
    return [
        [
            g["graph"],
            g["convs"],
            g["int8_convs"],
            ", ".join(g["float_convs"]) or "-",
            ", ".join(g["kept_in_float"]) or "-",
            g["preprocess"],
            f"{g['bytes_float'] / 1024:.0f} -> {g['bytes_int8'] / 1024:.0f}",
        ]
        for g in report["graphs"]
    ]


def sensitivity_rows(report: dict[str, Any]) -> list[list[Any]]:
    return [
        [r["graph"], r["node"], r["gdn"], r["psnr_drop_db"], r["bpp_increase"]]
        for r in report.get("sensitivity") or []
    ]


def trial_rows(report: dict[str, Any]) -> list[list[Any]]:
    search = report.get("accuracy_aware") or {}
    return [
        [t["trial"], t["kept"] or "(all quantized)", t["psnr_drop_db"], t["bpp_increase"], t["met"]]
        for t in search.get("trials", [])
    ]


def write(folder: Path, report: dict[str, Any], title: str) -> None:
    write_json(folder / "report.json", report)
    check = report["quick_check"]
    sections = [
        ("Graphs (Conv nodes in INT8 / left float)", md_table(GRAPH_COLUMNS, graph_rows(report))),
        (
            f"Quick check against the float export ({check['images']} calibration-folder "
            "images; the validate step measures the evaluation images)",
            md_table(
                ["PSNR float", "PSNR int8", "PSNR drop dB", "bpp float", "bpp int8", "bpp incr."],
                [
                    [
                        check["reference"]["psnr"],
                        check["psnr"],
                        check["psnr_drop_db"],
                        check["reference"]["bpp"],
                        check["bpp"],
                        check["bpp_increase"],
                    ]
                ],
            ),
        ),
    ]
    if report.get("sensitivity"):
        sections.append(
            (
                "Sensitivity: quality lost when this layer alone is quantized",
                md_table(SENS_COLUMNS, sensitivity_rows(report)),
            )
        )
    top = report.get("keep_float_top_k")
    if top:
        rows = [[r["graph"], r["node"], r["psnr_drop_db"], r["bpp_increase"]] for r in top["kept"]]
        sections.append(
            (
                f"keep_float_top_k {top['k']}: the most sensitive Convs left float",
                md_table(["graph", "node", "alone: PSNR drop dB", "bpp increase"], rows),
            )
        )
    search = report.get("accuracy_aware")
    if search:
        kept = "\n".join(f"- {k['graph']} {k['node']}: {k['reason']}" for k in search["kept"])
        verdict = "met" if search["met"] else "NOT met (trial budget spent)"
        sections.append(
            (
                f"Accuracy-aware search: tolerance {verdict}",
                md_table(TRIAL_COLUMNS, trial_rows(report)) + "\n\n" + (kept or "nothing kept"),
            )
        )
    write_markdown(folder / "report.md", title, sections)
