"""An experiment's report as files: report.json, report.md and its plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from recommender.audience.report import Report, summary_lines
from recommender.index.files import atomic_write


def write_report(report: Report, out: Path) -> list[Path]:
    """report.json, report.md, ctr.png (CTR per arm with its interval), positions.png
    (CTR by position) and days.png (clicks over time); the paths written."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a server
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    written = [out / "report.json", out / "report.md"]
    atomic_write(written[0], (json.dumps(report.as_json(), indent=2, ensure_ascii=False) + "\n").encode())
    md = ["# Experiment " + report.experiment, "", "```", *summary_lines(report), "```", "",
          "![CTR per arm](ctr.png)", "![CTR by position](positions.png)", "![Clicks per day](days.png)", ""]
    atomic_write(written[1], "\n".join(md).encode())
    for name, draw in (("ctr.png", _ctr), ("positions.png", _positions), ("days.png", _days)):
        fig, ax = plt.subplots(figsize=(6, 3.5))
        draw(ax, report)
        fig.tight_layout()
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
        written.append(out / name)
    return written


def _ctr(ax: Any, report: Report) -> None:
    arms = [a for a in report.arms if a.ctr is not None]
    low = [a.ctr - a.ctr_ci[0] if a.ctr_ci and a.ctr is not None else 0 for a in arms]
    high = [a.ctr_ci[1] - a.ctr if a.ctr_ci and a.ctr is not None else 0 for a in arms]
    ax.bar([a.arm for a in arms], [a.ctr for a in arms], yerr=[low, high], capsize=6, color="#4c72b0")
    ax.set_ylabel("CTR (clicks / impressions)")
    ax.set_title("CTR per arm, 95 % interval clustered by " + report.unit)


def _positions(ax: Any, report: Report) -> None:
    for arm in dict.fromkeys(p.arm for p in report.positions):
        rows = [p for p in report.positions if p.arm == arm and p.ctr is not None]
        ax.plot([p.pos for p in rows], [p.ctr for p in rows], marker="o", label=arm)
    ax.set_xlabel("position in the block")
    ax.set_ylabel("CTR")
    ax.set_title("CTR by position")
    if report.positions:
        ax.legend()


def _days(ax: Any, report: Report) -> None:
    for arm in dict.fromkeys(d.arm for d in report.days):
        rows = [d for d in report.days if d.arm == arm]
        ax.plot([d.day for d in rows], [d.clicks for d in rows], marker=".", label=arm)
    ax.set_ylabel("clicks")
    ax.set_title("Clicks per day")
    ax.tick_params(axis="x", labelrotation=45, labelsize=7)
    if report.days:
        ax.legend()
