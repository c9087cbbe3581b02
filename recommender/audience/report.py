"""An experiment's report: per arm CTR with a 95 % interval clustered by unit, each
arm's difference to the first, a sample-ratio-mismatch check, CTR by position.

A unit's views are not independent (one reader clicks more than another), so the
interval of a CTR, sum(clicks) / sum(impressions) over units, is the delta method's
for a ratio of unit sums: var = n/(n-1) * sum_u (c_u - ctr * i_u)^2 / I^2. The store
keeps per arm the sums n, I, C, sum(c^2), sum(i^2), sum(c*i), so a report of millions
of units is one grouped query.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from recommender.audience.experiments import Experiment
from recommender.store.base import Store

Z95 = 1.959963984540054


@dataclass(frozen=True)
class ArmSums:
    """What the store sums over an arm's units."""

    arm: str
    units: int
    impressions: int
    clicks: int
    clicks_sq: int  # sum of c_u^2
    impressions_sq: int  # sum of i_u^2
    cross: int  # sum of c_u * i_u


@dataclass(frozen=True)
class ArmReport:
    arm: str
    profile: str
    units: int
    impressions: int
    clicks: int
    ctr: float | None
    ctr_ci: tuple[float, float] | None


@dataclass(frozen=True)
class Difference:
    arm: str
    vs: str
    diff: float | None
    ci: tuple[float, float] | None
    relative: float | None  # diff / the first arm's CTR


@dataclass(frozen=True)
class PositionCtr:
    arm: str
    pos: int
    impressions: int
    clicks: int
    ctr: float | None


@dataclass(frozen=True)
class DayCounts:
    arm: str
    day: str
    impressions: int
    clicks: int


@dataclass(frozen=True)
class Report:
    experiment: str
    unit: str
    running: bool
    arms: list[ArmReport]
    differences: list[Difference]
    sample_ratio_p: float | None  # a small p: units did not split as the weights say
    positions: list[PositionCtr] = field(default_factory=list)
    days: list[DayCounts] = field(default_factory=list)

    def as_json(self) -> dict:
        return asdict(self)


def ratio_variance(s: ArmSums) -> float | None:
    """The delta-method variance of the arm's CTR, clustered by unit."""
    if s.units < 2 or s.impressions == 0:
        return None
    r = s.clicks / s.impressions
    residual = s.clicks_sq - 2 * r * s.cross + r * r * s.impressions_sq  # sum_u (c_u - r i_u)^2
    return max(residual, 0.0) * s.units / (s.units - 1) / s.impressions**2


def arm_report(s: ArmSums, profile: str) -> ArmReport:
    ctr = s.clicks / s.impressions if s.impressions else None
    var = ratio_variance(s)
    ci = None if ctr is None or var is None else (ctr - Z95 * math.sqrt(var), ctr + Z95 * math.sqrt(var))
    return ArmReport(s.arm, profile, s.units, s.impressions, s.clicks, ctr, ci)


def difference(test: ArmSums, control: ArmSums) -> Difference:
    """test CTR - control CTR; units are split between arms, so the variances add."""
    a, b = arm_report(control, ""), arm_report(test, "")
    va, vb = ratio_variance(control), ratio_variance(test)
    if a.ctr is None or b.ctr is None:
        return Difference(test.arm, control.arm, None, None, None)
    diff = b.ctr - a.ctr
    ci = None
    if va is not None and vb is not None:
        half = Z95 * math.sqrt(va + vb)
        ci = (diff - half, diff + half)
    return Difference(test.arm, control.arm, diff, ci, diff / a.ctr if a.ctr else None)


def sample_ratio_p(units: list[int], weights: list[float]) -> float | None:
    """Pearson's chi-square test of the units per arm against the arms' weights."""
    total = sum(units)
    if total == 0:
        return None
    expected = [total * w / sum(weights) for w in weights]
    statistic = sum((o - e) ** 2 / e for o, e in zip(units, expected))
    from scipy.stats import chi2

    return float(chi2.sf(statistic, len(units) - 1))


def build_report(experiment: Experiment, sums: dict[str, ArmSums], positions: list[PositionCtr],
                 days: list[DayCounts]) -> Report:
    """The report of `experiment` from its arms' sums (arms without events count as empty)."""
    ordered = [sums.get(a.name) or ArmSums(a.name, 0, 0, 0, 0, 0, 0) for a in experiment.arms]
    arms = [arm_report(s, a.profile) for s, a in zip(ordered, experiment.arms)]
    differences = [difference(s, ordered[0]) for s in ordered[1:]]
    p = sample_ratio_p([s.units for s in ordered], [a.weight for a in experiment.arms])
    return Report(experiment.name, experiment.unit, experiment.running, arms, differences, p, positions, days)


def experiment_report(store: Store, experiment: Experiment) -> Report:
    """The report of `experiment` from the store's counters: a few grouped queries."""
    sums = {row[0]: ArmSums(*row) for row in store.arm_sums(experiment.name)}
    positions = [PositionCtr(arm, int(pos), int(i), int(c), c / i if i else None)
                 for arm, pos, i, c in store.event_cells("event_positions", experiment.name)]
    days = [DayCounts(arm, day, int(i), int(c)) for arm, day, i, c in store.event_cells("event_days", experiment.name)]
    return build_report(experiment, sums, positions, days)


def summary_lines(report: Report) -> list[str]:
    """The report as a reader reads it: per arm, then each difference, then the ratio check."""
    lines = [f"experiment {report.experiment} ({'running' if report.running else 'stopped'}, by {report.unit})"]
    for a in report.arms:
        ctr = "-" if a.ctr is None else f"{a.ctr:.4f}"
        ci = "" if a.ctr_ci is None else f" [{a.ctr_ci[0]:.4f}, {a.ctr_ci[1]:.4f}]"
        lines.append(f"  {a.arm:12} {a.profile:10} units {a.units:>9}  impressions {a.impressions:>10}  "
                     f"clicks {a.clicks:>9}  CTR {ctr}{ci}")
    for d in report.differences:
        if d.diff is None:
            lines.append(f"  {d.arm} - {d.vs}: no impressions yet")
            continue
        ci = "" if d.ci is None else f" [{d.ci[0]:+.4f}, {d.ci[1]:+.4f}]"
        rel = "" if d.relative is None else f" ({d.relative:+.1%})"
        verdict = "" if d.ci is None else ("  significant" if d.ci[0] > 0 or d.ci[1] < 0 else "  not significant")
        lines.append(f"  {d.arm} - {d.vs}: {d.diff:+.4f}{ci}{rel}{verdict}")
    if report.sample_ratio_p is not None:
        warn = "  MISMATCH: units did not split as the weights say" if report.sample_ratio_p < 0.001 else ""
        lines.append(f"  sample ratio check: p = {report.sample_ratio_p:.3g}{warn}")
    return lines
