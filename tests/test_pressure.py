"""The gate's pure decisions: DESIGN.md's table, every boundary, hysteresis. No servers."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from producers.pressure import (
    BROKER_UNAVAILABLE,
    QUEUE_PRESSURE,
    LevelState,
    Thresholds,
    decide,
    level_for,
    raw_level,
)
from sluice.priorities import PressureLevel as L
from sluice.priorities import Priority as P

T = Thresholds(warning=500, critical=1000, shed=5000, margin=0.10, dwell=2.0)

# DESIGN.md, Pressure levels: (level, priority) -> "accept" | delay in ms | "shed"
TABLE = {
    L.NORMAL: {P.LOW: "accept", P.NORMAL: "accept", P.HIGH: "accept", P.CRITICAL: "accept"},
    L.WARNING: {P.LOW: "shed", P.NORMAL: 250, P.HIGH: 250, P.CRITICAL: "accept"},
    L.CRITICAL: {P.LOW: "shed", P.NORMAL: "shed", P.HIGH: 500, P.CRITICAL: "accept"},
    L.SHED: {P.LOW: "shed", P.NORMAL: "shed", P.HIGH: "shed", P.CRITICAL: "accept"},
}


@pytest.mark.parametrize("level, priority, expected",
                         [(lv, p, e) for lv, row in TABLE.items() for p, e in row.items()])
def test_decide_matches_the_design_table(level: L, priority: P, expected: object) -> None:
    d = decide(level, priority)
    if expected == "shed":
        assert not d.allowed and d.reason == QUEUE_PRESSURE and d.retry_after_s > 0
    elif expected == "accept":
        assert d.allowed and d.delay_ms == 0 and d.reason is None
    else:
        assert d.allowed and d.delay_ms == expected


@pytest.mark.parametrize("priority", list(P))
def test_unknown_level_refuses_all_but_critical(priority: P) -> None:
    d = decide(L.UNKNOWN, priority)
    if priority is P.CRITICAL:
        assert d.allowed and d.delay_ms == 0
    else:
        assert not d.allowed and d.reason == BROKER_UNAVAILABLE and d.retry_after_s > 0


@given(st.sampled_from(list(L)))
def test_critical_is_never_shed_nor_delayed(level: L) -> None:
    assert decide(level, P.CRITICAL).allowed and decide(level, P.CRITICAL).delay_ms == 0


@pytest.mark.parametrize("depth, level", [
    (0, L.NORMAL), (499, L.NORMAL), (500, L.WARNING), (999, L.WARNING), (1000, L.CRITICAL),
    (4999, L.CRITICAL), (5000, L.SHED), (10**9, L.SHED)])
def test_rising_enters_each_level_at_its_threshold_at_once(depth: int, level: L) -> None:
    assert raw_level(depth, T) is level
    assert level_for(depth, T, LevelState(L.NORMAL), now=0.0).level is level


@pytest.mark.parametrize("level, hold_depth, drop_depth", [
    (L.WARNING, 450, 449), (L.CRITICAL, 900, 899), (L.SHED, 4500, 4499)])
def test_falling_needs_the_margin(level: L, hold_depth: int, drop_depth: int) -> None:
    # at threshold - margin exactly the level holds however long it lasts
    state = LevelState(level)
    for t in range(0, 100):
        state = level_for(hold_depth, T, state, now=float(t))
    assert state.level is level
    # one below the margin: still held until the dwell time has passed
    state = level_for(drop_depth, T, state, now=100.0)
    assert state.level is level
    state = level_for(drop_depth, T, state, now=101.99)
    assert state.level is level
    state = level_for(drop_depth, T, state, now=102.0)
    assert state.level < level


def test_falling_drops_straight_to_the_level_depth_supports() -> None:
    state = level_for(6000, T, None, now=0.0)
    assert state.level is L.SHED
    state = level_for(10, T, state, now=1.0)
    state = level_for(10, T, state, now=3.0)
    assert state.level is L.NORMAL


def test_a_bounce_above_the_bar_restarts_the_dwell() -> None:
    state = LevelState(L.CRITICAL)
    state = level_for(800, T, state, now=0.0)
    state = level_for(950, T, state, now=1.5)  # back above 900: timer resets
    state = level_for(800, T, state, now=2.5)
    state = level_for(800, T, state, now=4.0)
    assert state.level is L.CRITICAL
    assert level_for(800, T, state, now=4.5).level is L.WARNING


def test_unknown_previous_takes_the_raw_level() -> None:
    assert level_for(700, T, LevelState(L.UNKNOWN), now=0.0).level is L.WARNING


@settings(max_examples=200)
@given(threshold=st.sampled_from([500, 1000, 5000]),
       wiggle=st.lists(st.integers(-49, 49), min_size=20, max_size=200),
       step=st.floats(0.05, 1.0))
def test_depth_hovering_at_a_threshold_does_not_flap(threshold: int, wiggle: list[int],
                                                     step: float) -> None:
    """Depth within +-49 of a threshold (inside the 10% margin) never changes level."""
    state, changes, now = None, 0, 0.0
    for delta in [0] + wiggle:
        new = level_for(threshold + delta, T, state, now)
        if state is not None and new.level is not state.level:
            changes += 1
        state, now = new, now + step
    assert changes == 0


@given(depths=st.lists(st.integers(0, 20_000), min_size=1, max_size=100))
def test_level_never_below_the_raw_level(depths: list[int]) -> None:
    """Whatever the history, the level is at least the level of the current depth."""
    state, now = None, 0.0
    for depth in depths:
        state = level_for(depth, T, state, now)
        assert state.level >= raw_level(depth, T)
        now += 0.5
