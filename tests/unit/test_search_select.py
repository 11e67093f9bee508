"""The choice of a search: fastest feasible (ties within the noise -> less quality loss),
best effort when nothing is feasible, and the Pareto front."""

from __future__ import annotations

from typing import Any

import pytest

from compressor.search.engine import TrialRecord
from compressor.search.report import choose, pareto_front
from compressor.search.trial import UNMEASURED, Outcome


def rec(n: int, latency: float | None, loss: float, size: float = 1.0, **gate: Any) -> TrialRecord:
    limit, value = gate.get("limit", 0.3), gate.get("value", loss)
    gates = [{"gate": "max_psnr_drop_db", "limit": limit, "value": value, "passed": value <= limit}]
    outcome = Outcome(latency=latency, quality_loss=loss, size_mb=size, gates=gates)
    return TrialRecord(n, {"x": n}, outcome, f"trials/{n:04d}")


def test_the_fastest_feasible_wins_and_near_ties_go_to_the_smaller_loss() -> None:
    records = [rec(0, 0.50, 0.20), rec(1, 0.51, 0.05), rec(2, 0.40, 0.90), rec(3, 0.70, 0.0)]
    chosen, met = choose(records, tie=0.05)  # 0.51 is within 5% of 0.50: a tie
    assert met and chosen is not None and chosen.number == 1
    chosen, _ = choose(records, tie=0.0)
    assert chosen is not None and chosen.number == 0


def test_nothing_feasible_gives_the_closest_as_best_effort() -> None:
    records = [rec(0, 0.5, 2.0), rec(1, 0.9, 0.4), rec(2, 0.3, 1.0)]
    chosen, met = choose(records, tie=0.05)
    assert not met and chosen is not None and chosen.number == 1  # 0.1 dB over, the least
    assert choose([], tie=0.05) == (None, False)
    failed = TrialRecord(0, {}, Outcome(error="boom"), "trials/0000")
    assert choose([failed], tie=0.05) == (failed, False)
    assert failed.outcome.violation() == UNMEASURED and not failed.outcome.feasible


def test_constraint_values_follow_optunas_sign_convention() -> None:
    o = rec(0, 1.0, 0.5).outcome
    assert o.constraints() == {"max_psnr_drop_db": pytest.approx(0.2)}  # 0.2 dB over
    speed = {"gate": "min_speedup", "limit": 2.0, "value": 2.5, "passed": True}
    assert Outcome(gates=[speed]).constraints() == {"min_speedup": pytest.approx(-0.5)}
    unmeasured = {"gate": "min_speedup", "limit": 2.0, "value": None, "passed": False}
    assert Outcome(gates=[unmeasured]).constraints() == {"min_speedup": UNMEASURED}


def test_the_pareto_front_keeps_only_undominated_feasible_trials() -> None:
    records = [
        rec(0, 0.5, 0.2, 1.0),
        rec(1, 0.6, 0.25, 1.0),  # dominated by 0
        rec(2, 0.4, 0.28, 1.0),
        rec(3, 0.7, 0.1, 2.0),
        rec(4, 0.1, 0.9, 0.5),  # infeasible: not on the front while feasible ones exist
    ]
    assert [r.number for r in pareto_front(records)] == [2, 0, 3]
    assert [r.number for r in pareto_front([records[4]])] == [4]
