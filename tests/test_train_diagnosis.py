"""Loss-curve diagnosis: each rule fires on its own crafted curve and on no other one."""

from __future__ import annotations

import math

import pytest

from slmkit.train.diagnosis import diagnose

# name -> (train losses, validation losses)
CURVES: dict[str, tuple[list[float], list[float]]] = {
    "healthy": ([2.0, 1.8, 1.7, 1.5, 1.45, 1.3, 1.2, 1.25, 1.1, 1.0], [1.6, 1.4, 1.3]),
    "stalled": ([2.0, 2.02, 1.98, 2.01, 1.99, 2.0, 2.03, 1.97, 2.0, 1.98], [2.0, 2.0, 1.99]),
    "overfitting-val": ([2.0, 1.7, 1.4, 1.2, 1.0, 0.8, 0.6, 0.5, 0.4, 0.3], [1.5, 1.2, 1.4, 1.6]),
    "overfitting-collapse": ([2.0, 1.2, 0.6, 0.3, 0.1, 0.05, 0.02, 0.01, 0.01, 0.01], []),
    "spike": ([2.0, 1.8, 1.7, 1.5, 9.0, 1.3, 1.2, 1.1, 1.0, 0.9], []),
    "diverged-rise": ([1.0, 1.1, 1.3, 1.5, 1.7, 2.0, 2.2, 2.4, 2.6, 3.0], []),
    "diverged-nan": ([2.0, 1.8, 1.7, 1.5, math.nan], []),
}
# name -> (status, a phrase only that rule's summary has)
VERDICTS = {
    "healthy": ("healthy", "the loss fell from"),
    "stalled": ("stalled", "barely moved"),
    "overfitting-val": ("overfitting", "validation loss rose"),
    "overfitting-collapse": ("overfitting", "collapsed"),
    "spike": ("diverged", "spiked to 9.000 at log 5"),
    "diverged-rise": ("diverged", "the loss rose from"),
    "diverged-nan": ("diverged", "NaN/inf"),
}


@pytest.mark.parametrize("curve", CURVES)
def test_each_rule_fires_on_its_curve_and_on_no_other(curve: str) -> None:
    train, val = CURVES[curve]
    result = diagnose(train, val)
    fired = [
        rule
        for rule, (status, phrase) in VERDICTS.items()
        if result.status == status and phrase in result.summary
    ]
    assert fired == [curve], (result.status, result.summary)
    assert result.advice


def test_each_verdict_carries_its_own_advice() -> None:
    advice = {curve: tuple(diagnose(*CURVES[curve]).advice) for curve in CURVES}
    assert "lower train.lr" in advice["spike"][0] and "lower train.lr" in advice["diverged-nan"][0]
    assert "raise train.lr" in advice["stalled"][0]
    assert "stop earlier" in advice["overfitting-val"][0]
    assert len({advice[c] for c in ("healthy", "stalled", "overfitting-val", "spike")}) == 4


def test_too_few_points_are_not_judged() -> None:
    result = diagnose([2.0, 1.0, 0.5])
    assert result.status == "too-short" and "3 loss point" in result.summary
    assert diagnose([2.0, math.inf]).status == "diverged", "a NaN/inf is judged at any length"


def test_validation_rise_needs_a_falling_train_loss() -> None:
    # validation up while train is flat is a stalled run, not overfitting
    train, _ = CURVES["stalled"]
    assert diagnose(train, [1.5, 1.2, 1.4, 1.6]).status == "stalled"
