"""Fair shares within a priority: one noisy tenant cannot shed everyone else.

Under pressure, what a priority can still take (the drain rate left once higher priorities
have taken theirs) is shared max-min fairly among the tenants active in the last few
seconds, by weight: a tenant asking for less than its share gets all it asks for, and what
it leaves is shared among the others. A tenant whose accepted rate is over its share is shed
first, with `TENANT_QUOTA`; a tenant under its share is admitted as long as its priority
has room (the depth table and the deadline). Pure functions: the rates come from counters
the pressure monitor already reads in its one round trip per tick.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from producers.pressure import Decision
from sluice.priorities import PressureLevel, Priority

__all__ = ["TENANT_QUOTA", "WINDOW_S", "TenantRates", "fair_shares", "available_rate",
           "under_pressure", "share_capacity", "tenant_quota", "busiest", "OTHERS", "TOP_TENANTS"]

#: what `busiest` calls the tenants beyond the top N (a bounded label set for metrics)
OTHERS = "(others)"
#: tenants named per priority in `sluice pressure`, the API and the metrics (the busiest)
TOP_TENANTS = 10

TENANT_QUOTA = "TENANT_QUOTA"
#: the tenant counters are kept per window of this many seconds (the current and the last
#: one are read): "active" means offered work in the last one or two windows
WINDOW_S = 2.0
#: share of what is available that is handed out: the rest drains what is already queued
TARGET = 0.95
#: the quota engages when the predicted wait passes this fraction of the deadline (or the
#: level is WARNING or above), so that the queue still has room for tenants under share
ENGAGE_AT = 0.25
#: seconds over which the shares drain the backlog back to the engage point
DRAIN_HORIZON_S = 10.0


@dataclass(frozen=True, slots=True)
class TenantRates:
    """Jobs/s per tenant at one priority, as every producer sees them within one tick."""

    offered: dict[str, float] = field(default_factory=dict)
    accepted: dict[str, float] = field(default_factory=dict)


def fair_shares(capacity: float, demands: Mapping[str, float],
                weights: Mapping[str, float] | None = None) -> dict[str, float]:
    """Weighted max-min fair shares of `capacity` (water-filling): no tenant gets more than
    it asks; one that asks less than its weighted part leaves the rest to the others. The
    shares sum to min(capacity, total demand)."""
    weight = {t: max((weights or {}).get(t, 1.0), 1e-9) for t in demands}
    shares = {t: 0.0 for t in demands}
    active = {t: d for t, d in demands.items() if d > 0}
    left = max(capacity, 0.0)
    while active and left > 0:
        per_weight = left / sum(weight[t] for t in active)
        fits = {t: d for t, d in active.items() if d <= per_weight * weight[t]}
        if not fits:
            for t in active:
                shares[t] = per_weight * weight[t]
            break
        for t, d in fits.items():
            shares[t] = d
            left -= d
            del active[t]
    return shares


def available_rate(rate: float | None, arrivals: Mapping[str, float],
                   priority: Priority) -> float | None:
    """Jobs/s that `priority` can start: the drain rate less what higher priorities are
    taking. None while the drain is unknown."""
    if rate is None:
        return None
    return max(0.0, rate - sum(arrivals.get(p.name, 0.0) for p in Priority if p < priority))


def share_capacity(available: float | None, wait_s: float,
                   deadline_s: float | None) -> float | None:
    """What the tenants of a priority share, in jobs/s: what it can take (`TARGET` of it),
    less what drains the backlog above the engage point within `DRAIN_HORIZON_S`. Without
    that, shares that add up to the capacity keep the queue where it is, and one tenant's
    backlog (built before fairness engaged) would hold every tenant at the deadline, or push
    the depth to a level that sheds them all."""
    if available is None:
        return None
    if deadline_s is None or not math.isfinite(wait_s):
        return available * TARGET
    excess_s = max(0.0, wait_s - ENGAGE_AT * deadline_s)  # seconds of work to drain
    return available * max(0.0, TARGET - excess_s / DRAIN_HORIZON_S)


def under_pressure(level: PressureLevel, wait_s: float, deadline_s: float | None) -> bool:
    """When fairness applies: WARNING or above, or a predicted wait nearing the deadline."""
    if level in (PressureLevel.WARNING, PressureLevel.CRITICAL, PressureLevel.SHED):
        return True
    return deadline_s is not None and wait_s >= ENGAGE_AT * deadline_s


def tenant_quota(tenant: str, rates: TenantRates, available: float | None,
                 weights: Mapping[str, float] | None = None) -> Decision | None:
    """`TENANT_QUOTA` when `tenant` is over its fair share of `available` jobs/s (see
    `share_capacity`); None when it may go on (under its share, or nothing measured yet).
    Call it under pressure only."""
    if available is None or not set(rates.offered) - {tenant}:
        return None  # nothing measured, or nobody else to be fair to: the deadline decides
    demands = dict(rates.offered)
    demands[tenant] = max(demands.get(tenant, 0.0), rates.accepted.get(tenant, 0.0), 1e-6)
    share = fair_shares(available, demands, weights)[tenant]
    accepted = rates.accepted.get(tenant, 0.0)
    if accepted <= share:
        return None
    # when its rate over the window would be back at its share
    retry = WINDOW_S * (accepted - share) / accepted if math.isfinite(accepted) else WINDOW_S
    return Decision(allowed=False, reason=TENANT_QUOTA, retry_after_s=round(max(1.0, retry), 1))


def busiest(rates: TenantRates, n: int) -> list[tuple[str, float, float]]:
    """(tenant, offered, accepted) jobs/s for the `n` tenants offering the most, and the
    rest summed as `OTHERS`: a view whose size does not grow with the number of tenants."""
    ranked = sorted(rates.offered, key=lambda t: (-rates.offered[t], t))
    rows = [(t, rates.offered[t], rates.accepted.get(t, 0.0)) for t in ranked[:n]]
    rest = ranked[n:]
    if rest:
        rows.append((OTHERS, sum(rates.offered[t] for t in rest),
                     sum(rates.accepted.get(t, 0.0) for t in rest)))
    return rows
