"""Fair shares within a priority, as pure functions: tables and hypothesis, no servers."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from producers.fairness import (
    OTHERS,
    TENANT_QUOTA,
    TenantRates,
    available_rate,
    busiest,
    fair_shares,
    share_capacity,
    tenant_quota,
    under_pressure,
)
from sluice.priorities import PressureLevel as L
from sluice.priorities import Priority as P

demands = st.dictionaries(st.text(min_size=1, max_size=5), st.floats(0, 1e4), max_size=12)
weights = st.floats(0.1, 10)


def test_a_quiet_tenant_gets_all_it_asks_and_the_noisy_one_the_rest() -> None:
    quiet = {f"q{i}": 5.0 for i in range(9)}
    shares = fair_shares(100.0, {"noisy": 800.0, **quiet})
    assert all(shares[t] == 5.0 for t in quiet)
    assert shares["noisy"] == pytest.approx(55.0)


def test_weights_split_what_is_contended() -> None:
    shares = fair_shares(90.0, {"a": 100.0, "b": 100.0}, {"a": 2.0})
    assert shares == pytest.approx({"a": 60.0, "b": 30.0})


@given(capacity=st.floats(0, 1e4), wanted=demands)
def test_shares_sum_to_capacity_or_demand_and_nobody_gets_more_than_asked(
        capacity: float, wanted: dict[str, float]) -> None:
    shares = fair_shares(capacity, wanted)
    assert sum(shares.values()) == pytest.approx(min(capacity, sum(wanted.values())),
                                                 rel=1e-6, abs=1e-6)
    assert all(shares[t] <= d + 1e-9 for t, d in wanted.items())


@given(capacity=st.floats(1, 1e4), wanted=demands, w=st.dictionaries(
    st.text(min_size=1, max_size=5), weights))
def test_a_tenant_under_its_equal_part_is_never_cut(capacity: float, wanted: dict[str, float],
                                                    w: dict[str, float]) -> None:
    shares = fair_shares(capacity, wanted, w)
    total_w = sum(w.get(t, 1.0) for t in wanted) or 1.0
    for tenant, demand in wanted.items():
        if demand <= capacity * w.get(tenant, 1.0) / total_w:
            assert shares[tenant] == pytest.approx(demand)


@given(rate=st.floats(0, 1e4), quiet=st.floats(0, 50))
def test_nobody_under_its_share_is_shed(rate: float, quiet: float) -> None:
    rates = TenantRates(offered={"noisy": 1e5, "quiet": quiet},
                        accepted={"noisy": rate, "quiet": min(quiet, rate / 100)})
    assert tenant_quota("quiet", rates, available=rate) is None


def test_a_tenant_over_its_share_is_shed_with_a_retry_after() -> None:
    rates = TenantRates(offered={"noisy": 800.0, "quiet": 5.0},
                        accepted={"noisy": 120.0, "quiet": 5.0})
    decision = tenant_quota("noisy", rates, available=100.0)
    assert decision is not None and decision.reason == TENANT_QUOTA
    assert not decision.allowed and decision.retry_after_s >= 1.0
    assert tenant_quota("noisy", rates, available=None) is None  # nothing measured yet


def test_a_newcomer_is_welcome_even_if_the_counters_have_not_seen_it() -> None:
    rates = TenantRates(offered={"noisy": 800.0}, accepted={"noisy": 99.9})
    assert tenant_quota("new", rates, available=100.0) is None
    assert tenant_quota("noisy", rates, available=100.0) is None  # alone, so far
    rates.offered["new"] = 0.5  # the next tick has seen the newcomer
    assert tenant_quota("noisy", rates, available=100.0) is not None


@pytest.mark.parametrize(("level", "wait", "deadline", "expected"), [
    (L.NORMAL, 0.0, 60.0, False), (L.NORMAL, 14.0, 60.0, False), (L.NORMAL, 15.0, 60.0, True),
    (L.WARNING, 0.0, 60.0, True), (L.SHED, 0.0, None, True), (L.NORMAL, 1e9, None, False)])
def test_fairness_applies_under_pressure_only(level: L, wait: float, deadline: float | None,
                                              expected: bool) -> None:
    assert under_pressure(level, wait, deadline) is expected


def test_what_a_priority_can_take_is_the_drain_less_the_higher_priorities() -> None:
    arrivals = {"CRITICAL": 10.0, "HIGH": 30.0, "NORMAL": 50.0}
    assert available_rate(100.0, arrivals, P.NORMAL) == 60.0
    assert available_rate(100.0, arrivals, P.LOW) == 10.0
    assert available_rate(20.0, arrivals, P.LOW) == 0.0
    assert available_rate(None, arrivals, P.LOW) is None


def test_the_busiest_view_is_bounded_however_many_tenants_there_are() -> None:
    rates = TenantRates(offered={f"t{i}": float(i) for i in range(100)},
                        accepted={f"t{i}": 1.0 for i in range(100)})
    rows = busiest(rates, 3)
    assert [t for t, _, _ in rows] == ["t99", "t98", "t97", OTHERS]
    assert rows[-1][1] == sum(range(97)) and rows[-1][2] == 97.0


def test_a_lone_tenant_is_never_held_to_a_quota() -> None:
    rates = TenantRates(offered={"default": 800.0}, accepted={"default": 500.0})
    assert tenant_quota("default", rates, available=100.0) is None


@pytest.mark.parametrize(("wait", "deadline", "expected"), [
    (0.0, 20.0, 95.0),      # at or under the engage point: TARGET of what it can take
    (5.0, 20.0, 95.0),
    (10.0, 20.0, 45.0),     # 5 s of work over it: drained within the horizon
    (30.0, 20.0, 0.0),      # far over: nobody over share gets in until it drains
    (30.0, None, 95.0)])
def test_the_shares_drain_a_backlog_back_to_the_engage_point(
        wait: float, deadline: float | None, expected: float) -> None:
    assert share_capacity(100.0, wait, deadline) == pytest.approx(expected)
    assert share_capacity(None, wait, deadline) is None
