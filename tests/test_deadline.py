"""The deadline-aware gate's pure decisions: drain rate, predicted wait, admission. No
servers, time passed in."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from producers.deadline import (
    DEADLINE,
    EVIDENCE_S,
    EVIDENCE_STARTS,
    HEADROOM,
    OVERTAKE_MARGIN,
    PROMISE_MARGIN_S,
    STALL_GRACE_S,
    STALL_S,
    Drain,
    admit,
    broken_promise,
    drain_after,
    predicted_wait,
)
from producers.pressure import decide
from sluice.priorities import PressureLevel as L
from sluice.priorities import Priority as P

DEPTHS = {"critical": 10, "high": 20, "normal": 30, "low": 40}


@pytest.mark.parametrize("priority, ahead", [(P.CRITICAL, 10), (P.HIGH, 30), (P.NORMAL, 60),
                                             (P.LOW, 100)])
def test_the_wait_counts_only_the_queues_at_and_above_the_priority(priority: P,
                                                                    ahead: int) -> None:
    assert predicted_wait(DEPTHS, priority, rate=10.0) == ahead / 10.0


def test_no_work_ahead_no_wait_and_no_drain_with_work_ahead_is_forever() -> None:
    assert predicted_wait({"low": 5}, P.HIGH, rate=0.0) == 0.0
    assert predicted_wait(DEPTHS, P.LOW, rate=0.0) == math.inf
    assert predicted_wait(DEPTHS, P.LOW, rate=None) == 0.0  # not measured: no evidence


def test_the_drain_follows_the_starts_and_ignores_idle_ticks() -> None:
    d = drain_after(Drain(), started=0, backlog=0, now=0.0)
    assert (d.rate, d.at, d.saturated) == (None, 0.0, False)
    assert drain_after(d, started=0, backlog=100, now=0.4).rate is None  # nothing seen yet
    d = drain_after(d, started=50, backlog=100, now=0.5)
    assert d.rate == 100.0
    idle = drain_after(d, started=3, backlog=0, now=10.0)  # a trickle, not the capacity
    assert idle.rate == 100.0 and idle.at == 10.0
    assert _ticks(Drain(at=0.0), [0] * 20, backlog=0)[-1].rate is None  # not even 0 jobs/s
    cold = drain_after(Drain(at=0.0), started=4, backlog=0, now=1.0)  # but at least that
    assert cold.rate == 4.0 and not cold.saturated and d.saturated
    slower = d
    for step in range(1, 40):  # capacity halves: the rate follows
        slower = drain_after(slower, started=25, backlog=100, now=0.5 + step * 0.5)
    assert 49 < slower.rate < 52  # type: ignore[operator]


def _ticks(drain: Drain, starts: list[int], backlog: int, every: float = 0.5) -> list[Drain]:
    """The drain after each of ticks `every` seconds apart, with `starts` job starts each
    and `backlog` jobs queued throughout."""
    out = []
    for n in starts:
        drain = drain_after(drain, started=n, backlog=backlog, now=drain.at + every)  # type: ignore[operator]
        out.append(drain)
    return out


def test_a_loss_of_half_the_workers_is_followed_within_two_seconds() -> None:
    steady = _ticks(Drain(rate=80.0, at=0.0, saturated=True), [40] * 20, backlog=500)[-1]
    assert steady.rate == 80.0
    after = _ticks(steady, [30] + [20] * 10, backlog=500)  # killed a quarter into a tick
    followed = next(n for n, d in enumerate(after, 1) if d.rate <= 0.625 * 80.0)  # type: ignore[operator]
    assert followed * 0.5 <= 2.0
    assert 38.0 <= after[-1].rate <= 45.0  # type: ignore[operator]
    more = _ticks(after[-1], [60] * 5, backlog=500)  # workers added: followed as fast
    assert more[2].rate >= 100.0  # type: ignore[operator]


def test_a_gate_holding_the_queues_short_does_not_read_its_slow_ticks_as_capacity() -> None:
    """40 jobs/s, a backlog of 15 at every tick (the gate keeps the queues short): a tick
    outlasts the backlog only when fewer than 15 jobs started in it, so those ticks alone
    measured 24-28 jobs/s, and pulled the rate down while the fast ones could only raise
    it back to a floor."""
    held = _ticks(Drain(rate=40.0, at=0.0, saturated=True), [14, 26, 12, 28, 13, 27] * 10,
                  backlog=15)
    assert min(d.rate for d in held) >= 40.0  # type: ignore[type-var]
    ample = _ticks(held[-1], [20] * 8, backlog=15 + 30)  # then a real measure: it counts
    assert ample[-1].rate is not None and ample[-1].rate < held[-1].rate  # type: ignore[operator]


def test_noise_around_the_rate_is_averaged_not_taken_for_a_step() -> None:
    noisy = _ticks(Drain(rate=80.0, at=0.0, saturated=True), [34, 46, 35, 45, 33, 47] * 5,
                   backlog=500)
    assert all(72.0 <= d.rate <= 88.0 for d in noisy)  # type: ignore[operator]
    # one measure far off, then back: an average, not a jump
    blip = _ticks(noisy[-1], [10, 40, 40], backlog=500)
    assert blip[0].rate > 60.0  # type: ignore[operator]


def test_a_couple_of_starts_in_a_tenth_of_a_second_is_not_a_rate() -> None:
    """A worker's first jobs on a loaded CI machine, ticks of 0.1 s (the chaos test's
    monitor log): one start, then two with three jobs waiting, read as 9 and then 18
    jobs/s "measured" of a fleet draining 47 jobs/s, and the gate refused the light load
    as an overload. The first measure waits for ten starts or a second of evidence."""
    backlogs = [3, 3, 4, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]  # at the tick before each
    starts = [1, 2, 0, 5, 4, 2, 3, 2, 5, 5, 5, 5, 5, 5]
    drain, rates = Drain(at=0.0), []
    for n, (backlog, started) in enumerate(zip(backlogs, starts, strict=True), 1):
        drain = drain_after(drain, started=started, backlog=backlog, now=n * 0.1)
        rates.append(drain.rate)
    assert all(r is None or r >= 25.0 for r in rates)
    assert rates[-1] is not None and not drain.saturated


def test_the_first_measure_pools_the_ticks_that_measured_until_they_are_evidence() -> None:
    """One worker of 10 jobs/s, a backlog that outlasts every tick but the warm-up one:
    ten ticks of one start are one measure of 10 jobs/s, taken when the tenth is seen."""
    drain = _ticks(Drain(at=0.0), [1], backlog=0, every=0.1)[-1]  # ran dry: not even a floor
    assert drain.rate is None
    ticks = _ticks(drain, [1] * 10, backlog=15, every=0.1)
    assert not any(d.saturated for d in ticks[:-1])
    assert ticks[-2].rate == pytest.approx(10.0)  # a second of starts: a floor, meanwhile
    assert ticks[-1].saturated and ticks[-1].rate == pytest.approx(10.0)
    # a second of evidence is enough, however few the starts (long jobs)
    slow = _ticks(Drain(at=0.0), [0, 0, 0, 1, 0, 0, 0, 1], backlog=15, every=0.125)
    assert not slow[-2].saturated
    assert slow[-1].saturated and slow[-1].rate == pytest.approx(2.0)


def test_work_queued_where_no_worker_takes_it_is_no_evidence_of_slow_workers() -> None:
    """600 LOW jobs and no worker on `low` (the console test): the first jobs a worker
    takes after seconds of that, three HIGH replays, started at once; read over the
    seconds before them, they made a rate of 0.1 job/s, and the second and third replays
    were refused as late."""
    drain = _ticks(Drain(at=0.0), [0] * 50, backlog=600, every=0.1)[-1]
    replays = _ticks(drain, [1, 1, 1], backlog=600, every=0.1)
    assert all(d.rate is None or d.rate >= 5.0 for d in replays)


def test_a_stall_that_starts_and_ends_mid_tick_is_no_step() -> None:
    """The tick in which a stall begins and the one in which it ends each see fewer starts
    than the rate: two low measures in a row, which made a "step" that halved the rate (80
    to 40 jobs/s) right after the workers came back."""
    steady = _ticks(Drain(rate=80.0, at=0.0, saturated=True), [40] * 10, backlog=500)[-1]
    stall = _ticks(steady, [20, 0, 0, 0, 0, 20, 40, 40], backlog=500)
    assert min(d.rate for d in stall) >= 0.8 * 80.0  # type: ignore[type-var]


def test_a_stall_of_the_workers_lowers_nothing() -> None:
    """Workers starting nothing for two seconds under a light load (CPU starved, stopped),
    then catching up: the chaos test that saw the gate refuse jobs with minutes to spare
    had its rate fall from 45 to 21 jobs/s over such a stall."""
    rate = Drain(rate=45.0, at=0.0, saturated=True)
    ticks = _ticks(rate, [0] * 20, backlog=50, every=0.1)
    assert {d.rate for d in ticks} == {45.0}
    catching_up = _ticks(ticks[-1], [10] * 5, backlog=80, every=0.1)
    assert min(d.rate for d in catching_up) >= 45.0  # type: ignore[type-var]
    # nothing starting for longer than the grace: the workers may be gone, it is believed
    gone = _ticks(rate, [0] * 100, backlog=50, every=0.1)
    assert gone[int((STALL_S + STALL_GRACE_S) / 0.1) - 1].rate == 45.0
    assert gone[-1].rate < 45.0 / 2  # type: ignore[operator]


def test_long_jobs_starting_seconds_apart_measure_their_rate() -> None:
    """Two slots of 30 s jobs, a start every 15 s: ticks without a start are part of the
    span the next start measures, not zeros averaged in, nor a stall: from the right rate,
    from one far too high (2 jobs/s, the short jobs before them: every gap then looked
    like a stall, and the tick ending it measured one start a tick, 2 jobs/s, again), and
    with the slots' starts unevenly spaced."""
    def run(drain: Drain, gaps: list[int]) -> Drain:
        for _ in range(10):
            for gap in gaps:  # ticks of 0.5 s; one start ends each gap
                drain = _ticks(drain, [0] * (gap - 1) + [1], backlog=100)[-1]
        return drain

    right = run(Drain(rate=1 / 15, at=0.0, saturated=True), [30])
    assert right.rate is not None and abs(right.rate - 1 / 15) < 1e-9
    high = run(Drain(rate=2.0, at=0.0, saturated=True), [30])
    assert high.rate is not None and abs(high.rate - 1 / 15) < 0.01
    uneven = run(Drain(rate=1 / 15, at=0.0, saturated=True), [2, 58])  # 1 s, then 29 s
    assert uneven.rate is not None and 1 / 30 < uneven.rate < 2 / 15


def test_starts_measure_capacity_only_when_the_queues_never_ran_dry() -> None:
    # probes at 8 jobs/s, each waiting at a sample and drained as it came: not capacity
    probes = drain_after(Drain(at=0.0), started=8, backlog=1, now=1.0)
    assert probes.rate == 8.0 and not probes.saturated
    # a gate holding the queues short: its trickle does not cut the measured capacity
    held = drain_after(Drain(rate=74.0, at=0.0, saturated=True), started=20, backlog=10,
                       now=0.5)
    assert held.rate == 74.0
    # a backlog that outlasts the interval: the starts are what the workers can do
    busy = drain_after(Drain(rate=74.0, at=0.0, saturated=True), started=20, backlog=300,
                       now=0.5)
    assert busy.rate is not None and busy.rate < 74.0


def test_the_first_measure_of_capacity_replaces_a_floor_rather_than_averaging_with_it() -> None:
    floor = drain_after(Drain(at=0.0), started=2, backlog=0, now=1.0)  # warm-up jobs
    assert floor.rate == 2.0 and not floor.saturated
    burst = drain_after(floor, started=30, backlog=200, now=1.5)
    assert burst.rate == 60.0 and burst.saturated
    slow = drain_after(floor, started=10, backlog=200, now=6.0)  # a measure, however slow:
    assert slow.rate == 2.0 and slow.saturated  # 2 jobs/s is not below the floor
    few = drain_after(floor, started=1, backlog=200, now=1.5)  # one start: not evidence yet
    assert few.rate == 2.0 and not few.saturated
    # no start at all with work waiting: no measure yet (a stall, or long jobs)
    stuck = drain_after(floor, started=0, backlog=200, now=1.0)
    assert stuck.rate == 2.0 and not stuck.saturated and stuck.since == floor.since


@given(rate=st.floats(1, 1e5), started=st.integers(0, 10**6), backlog=st.integers(0, 10**6),
       dt=st.floats(0.01, 60))
def test_the_drain_stays_between_the_old_rate_and_the_sample(rate: float, started: int,
                                                             backlog: int, dt: float) -> None:
    new = drain_after(Drain(rate=rate, at=0.0, saturated=True), started, backlog, dt).rate
    assert new is not None
    sample = started / dt
    if backlog > started:  # the workers were busy throughout: a measure of capacity
        assert min(rate, sample) - 1e-6 <= new <= max(rate, sample) + 1e-6
    elif started >= EVIDENCE_STARTS or dt >= EVIDENCE_S:  # ran dry: the starts follow
        assert new == max(rate, sample)  # arrivals: a floor, never a cut
    else:  # and a couple of starts in a moment is no evidence of anything
        assert new == rate


@given(level=st.sampled_from(list(L)), wait=st.floats(0, 1e6) | st.just(math.inf),
       deadline=st.none() | st.floats(0, 1e6))
def test_critical_is_never_refused_for_its_deadline(level: L, wait: float,
                                                   deadline: float | None) -> None:
    assert admit(level, P.CRITICAL, wait, deadline).allowed


@given(level=st.sampled_from(list(L)), priority=st.sampled_from(list(P)),
       wait=st.floats(0, 1e6) | st.just(math.inf), deadline=st.none() | st.floats(0, 1e6))
def test_admission_is_the_depth_table_and_the_deadline(level: L, priority: P, wait: float,
                                                       deadline: float | None) -> None:
    table, got = decide(level, priority), admit(level, priority, wait, deadline)
    if not table.allowed:
        assert got == table  # the depth table refuses first, with its own reason
    elif (priority is P.CRITICAL or deadline is None
          or wait + table.delay_ms / 1000 <= HEADROOM * deadline):
        assert got == table
    else:
        assert not got.allowed and got.reason == DEADLINE and got.retry_after_s >= 1


def test_a_refusal_says_when_the_job_would_fit() -> None:
    d = admit(L.NORMAL, P.LOW, wait_s=400.0, deadline_s=300.0)
    assert d.reason == DEADLINE and d.retry_after_s == 400.0 - HEADROOM * 300.0


def test_a_job_is_admitted_with_headroom_not_at_the_edge_of_its_deadline() -> None:
    assert admit(L.NORMAL, P.HIGH, wait_s=HEADROOM * 10.0, deadline_s=10.0).allowed
    assert not admit(L.NORMAL, P.HIGH, wait_s=9.9, deadline_s=10.0).allowed


def test_jobs_still_arriving_at_higher_priorities_overtake_and_lengthen_the_wait() -> None:
    depths = {"high": 10, "normal": 10}
    assert predicted_wait(depths, P.NORMAL, rate=10.0) == 2.0
    assert predicted_wait(depths, P.NORMAL, rate=10.0, arrivals={"CRITICAL": 4.0}) == \
        pytest.approx(20 / (10.0 - OVERTAKE_MARGIN * 4.0))
    assert predicted_wait(depths, P.NORMAL, rate=10.0, arrivals={"HIGH": 10.0}) == math.inf
    # higher priorities taking nearly all of it leave nothing to promise on
    assert predicted_wait(depths, P.NORMAL, rate=10.0, arrivals={"HIGH": 8.5}) == math.inf
    # a rate measured only while idle is a floor (the arrivals themselves), not capacity
    assert predicted_wait(depths, P.NORMAL, rate=10.0, arrivals={"HIGH": 10.0},
                          saturated=False) == 2.0
    assert predicted_wait(depths, P.HIGH, rate=10.0, arrivals={"NORMAL": 9.0}) == 1.0  # lower


@given(rate=st.floats(0.1, 1e4), ahead=st.integers(1, 10**5),
       arriving=st.floats(0, 1e4))
def test_more_overtaking_traffic_never_shortens_the_wait(rate: float, ahead: int,
                                                         arriving: float) -> None:
    depths = {"low": ahead}
    base = predicted_wait(depths, P.LOW, rate)
    assert predicted_wait(depths, P.LOW, rate, {"CRITICAL": arriving}) >= base


def test_before_arrivals_are_measured_this_process_sends_count_as_overtaking() -> None:
    from producers.monitor import Snapshot

    snap = Snapshot(L.NORMAL, depths={"high": 10}, at=100.0,
                    drain=Drain(rate=50.0, at=100.0, saturated=True))
    sent = {"high": 50}  # 100 jobs/s of HIGH over the last half second, from this process
    assert snap.wait_for(P.NORMAL, sent) == pytest.approx(60 / 50.0)  # (no time: no rate)
    assert snap.wait_for(P.NORMAL, sent, now=100.5) == math.inf  # 100/s > 50/s drained
    measured = Snapshot(L.NORMAL, depths={"high": 10}, at=100.0,
                        drain=Drain(rate=50.0, at=100.0, saturated=True),
                        arrivals={p.name: 0.0 for p in P})
    assert measured.wait_for(P.NORMAL, sent, now=100.5) == pytest.approx(60 / 50.0)


def test_higher_traffic_is_taken_out_of_the_drain_only_when_more_is_offered_than_drained(
        ) -> None:
    """A drain that keeps up with what arrives measures the arrivals, not capacity: taking
    CRITICAL's 8 jobs/s out of a drain of 8 jobs/s refused NORMAL in a nearly idle system."""
    from producers.monitor import OVERLOAD, Snapshot

    def snap(critical: float, low: float = 0.0) -> Snapshot:
        return Snapshot(L.NORMAL, depths={"high": 1, "normal": 1}, at=100.0,
                        drain=Drain(rate=8.0, at=100.0, saturated=True),
                        arrivals={"CRITICAL": critical},
                        demand={"CRITICAL": critical, "LOW": low}, expires={"normal": 102.0})
    keeping_up = snap(8.15)
    assert keeping_up.wait_for(P.NORMAL) == pytest.approx(2 / 8.0)
    assert keeping_up.breaks_promise(P.HIGH, now=100.0) is None
    assert snap(OVERLOAD * 8.0 + 0.1).wait_for(P.NORMAL) == math.inf
    # under overload CRITICAL's 4 jobs/s leave the NORMAL job 3 jobs/s: 2 jobs take 0.67 s,
    # more than its 2 s left allow (75 %, less the 1 s margin)
    assert snap(4.0, low=20.0).breaks_promise(P.HIGH, now=100.0) is not None
    # CRITICAL alone taking the whole drain: late whatever is refused, so nothing is
    assert snap(8.0, low=20.0).breaks_promise(P.HIGH, now=100.0) is None
    # and a burst of LOW jobs is an overload, but takes nothing from above NORMAL's queue
    burst = Snapshot(L.NORMAL, depths={"normal": 1, "low": 600}, at=100.0,
                     drain=Drain(rate=8.0, at=100.0, saturated=True),
                     demand={"LOW": 6000.0}, expires={"normal": 110.0, "low": 700.0})
    assert burst.breaks_promise(P.HIGH, {"high": 3}, now=100.1) is None


def test_on_an_idle_floor_nothing_is_subtracted_not_even_this_process_sends() -> None:
    from producers.monitor import Snapshot

    floor = Drain(rate=2.0, at=100.0, saturated=False)  # the starts of an idle system
    idle = Snapshot(L.NORMAL, depths={"critical": 1}, at=100.0, drain=floor,
                    arrivals={"CRITICAL": 2.0})  # the same starts, seen as arrivals
    assert idle.wait_for(P.HIGH, {}, now=100.5) == pytest.approx(1 / 2.0)
    # one HIGH job just sent by this process (4/s over the shortest span): still no refusal
    assert idle.wait_for(P.NORMAL, {"high": 1}, now=100.1) == pytest.approx(2 / 2.0)


def test_a_higher_job_that_would_make_an_accepted_lower_job_late_is_refused() -> None:
    depths = {"high": 40, "normal": 5}
    # the last NORMAL job starts after 45 jobs at 10/s: 4.5 s, within the HEADROOM of the
    # oldest's 10 s left, less the margin
    assert broken_promise(depths, P.HIGH, 10.0, {"normal": 10.0}) is None
    # with 5 s left they would not: the HIGH job is refused until that backlog has drained
    assert broken_promise(depths, P.HIGH, 10.0, {"normal": 5.0}) == (40 + 5) / 10.0
    # but never for longer than the promise it keeps has left
    assert broken_promise(depths, P.HIGH, 10.0, {"normal": 4.2}) == 4.2
    # a burst of lower jobs is held to its oldest's deadline, all of it
    assert broken_promise({"high": 10, "normal": 65}, P.HIGH, 10.0, {"normal": 10.0}) \
        is not None
    # CRITICAL jobs queued ahead count, and so do those still arriving (never refused)
    assert broken_promise({"critical": 30, "high": 10, "normal": 5}, P.HIGH, 10.0,
                          {"normal": 5.0}) is not None
    assert broken_promise({"high": 20, "normal": 5}, P.HIGH, 10.0, {"normal": 5.0}) is None
    assert broken_promise({"high": 20, "normal": 5}, P.HIGH, 10.0, {"normal": 5.0},
                          critical_rate=4.0) is not None
    # LOW is protected from NORMAL and HIGH alike; nothing is below LOW; CRITICAL is free
    assert broken_promise({"normal": 50, "low": 1}, P.NORMAL, 10.0, {"low": 5.0}) \
        is not None
    assert broken_promise({"normal": 50, "low": 1}, P.LOW, 10.0, {"low": 5.0}) is None
    assert broken_promise({"normal": 50, "low": 1}, P.CRITICAL, 10.0, {"low": 5.0}) is None


def _start_of_a_lower_job(rate: float, deadline: float, offered: float,
                          critical: float) -> float | None:
    """When a NORMAL job accepted at 0 starts, while HIGH jobs are offered at `offered` x
    the drain `rate` and admitted by `broken_promise` alone, and CRITICAL arrives at
    `critical` jobs/s (a fluid queue above it, 20 ms steps); None if not by its deadline."""
    step, queued, due, t = 0.02, 0.0, 0.0, 0.0
    while t < deadline:
        due += offered * rate * step
        while due >= 1:
            due -= 1
            if broken_promise({"high": math.ceil(queued), "normal": 1}, P.HIGH, rate,
                              {"normal": deadline - t}, critical) is None:
                queued += 1
        queued = max(0.0, queued + critical * step - rate * step)
        if queued == 0.0:
            return t
        t += step
    return None


@settings(deadline=None, max_examples=60)
@given(rate=st.floats(5, 200), deadline=st.floats(2, 60), offered=st.floats(1, 10),
       critical=st.floats(0, 0.5))
def test_higher_work_offered_without_end_leaves_an_accepted_lower_job_its_deadline(
        rate: float, deadline: float, offered: float, critical: float) -> None:
    start = _start_of_a_lower_job(rate, deadline, offered, critical * rate)
    assert start is not None and start <= deadline - PROMISE_MARGIN_S


@pytest.mark.parametrize("depths, rate, left, why", [
    ({"normal": 5}, None, {"normal": 1.0}, "the drain rate is not measured yet"),
    ({"normal": 5}, 0.0, {"normal": 1.0}, "no job starts: the job's own wait decides"),
    ({"high": 99}, 10.0, {"normal": 1.0}, "no lower job is waiting"),
    ({"high": 99, "normal": 5}, 10.0, {}, "the lower job has no deadline"),
    ({"high": 99, "normal": 5}, 10.0, {"normal": -1.0}, "its promise is already broken"),
    ({"high": 99, "normal": 5}, 10.0, {"normal": 60.0}, "it has time to spare"),
    ({"high": 99, "normal": 5}, 10.0, {"normal": 5.0}, "it is late whatever is refused now"),
])
def test_no_refusal_without_a_promise_at_risk(depths: dict[str, int], rate: float | None,
                                              left: dict[str, float], why: str) -> None:
    assert broken_promise(depths, P.HIGH, rate, left) is None, why


@given(depths=st.dictionaries(st.sampled_from(["critical", "high", "normal", "low"]),
                              st.integers(0, 10**4)),
       priority=st.sampled_from(list(P)), rate=st.floats(0.1, 1e4),
       arriving=st.floats(0, 1e4), left=st.floats(0.01, 1e4), shorter=st.floats(0, 1))
def test_less_time_left_never_turns_a_refusal_into_an_admission_unless_it_is_too_late(
        depths: dict[str, int], priority: P, rate: float, arriving: float, left: float,
        shorter: float) -> None:
    above = sum(depths.get(q, 0) for q in ("critical", "high", "normal"))
    doomed = left * shorter <= 0 or above / rate > left * shorter  # not defended
    if broken_promise(depths, priority, rate, {"low": left}, arriving) is not None:
        assert broken_promise(depths, priority, rate, {"low": left * shorter},
                              arriving) is not None or doomed


@given(level=st.sampled_from(list(L)), priority=st.sampled_from(list(P)),
       retry=st.floats(1, 1e4))
def test_a_promise_at_risk_refuses_every_priority_but_critical(level: L, priority: P,
                                                                retry: float) -> None:
    got = admit(level, priority, 0.0, 60.0, breaks_promise_s=retry)
    if priority is P.CRITICAL or not decide(level, priority).allowed:
        assert got == decide(level, priority)
    else:
        assert not got.allowed and got.reason == DEADLINE and got.retry_after_s == retry


def test_the_snapshot_counts_the_time_since_the_tick_against_the_oldest_job() -> None:
    from producers.monitor import Snapshot

    snap = Snapshot(L.NORMAL, depths={"high": 40, "normal": 5}, at=100.0,
                    drain=Drain(rate=10.0, at=100.0, saturated=True),
                    arrivals={p.name: 0.0 for p in P}, expires={"normal": 108.0})
    # 4.5 s of work before the last NORMAL job, 8 s left: it fits in the HEADROOM of
    # them less the margin (5 s)
    assert snap.breaks_promise(P.HIGH, now=100.0) is None
    assert snap.breaks_promise(P.HIGH, now=101.0) is not None  # 7 s left: 4.5 > 4.25
    assert snap.breaks_promise(P.HIGH, {"high": 10}, now=100.0) is not None  # sent since


def test_while_a_higher_priority_is_refused_a_lower_one_is_not_admitted_in_the_gaps() -> None:
    """Priority inversion found by the overload bench: HIGH refused (its jobs would have been
    late) lowered HIGH's admitted rate, and NORMAL and LOW were admitted in that room. The
    rate a lower job is left is the drain less what higher priorities are offered."""
    from producers.monitor import Snapshot

    snap = Snapshot(L.NORMAL, depths={"high": 50, "normal": 1}, at=100.0,
                    drain=Drain(rate=50.0, at=100.0, saturated=True),
                    arrivals={"CRITICAL": 10.0, "HIGH": 20.0},  # admitted
                    demand={"CRITICAL": 10.0, "HIGH": 90.0},    # offered: HIGH is refused
                    expires={"normal": 120.0})
    assert snap.wait_for(P.NORMAL) == math.inf
    assert snap.wait_for(P.HIGH) == pytest.approx(50 / (50.0 - OVERTAKE_MARGIN * 10.0))
    # the promise check counts only CRITICAL as still arriving: HIGH is held job by job by
    # the check itself (51 jobs at 50 - 1.25 x 10 jobs/s: 1.4 s, well within 20 s)
    assert snap.breaks_promise(P.HIGH) is None


def test_a_burst_offered_many_times_over_a_floor_is_an_overload_already() -> None:
    """The first second of a burst: the rate is still a floor (the queues ran dry since the
    last tick), but what is offered is many times it. Waiting for a measure of capacity let
    HIGH in as if CRITICAL took nothing (7 HIGH jobs late at 10x) and NORMAL and LOW as if
    HIGH took nothing (580 of them, which then held HIGH off for 20 s)."""
    from producers.monitor import Snapshot

    snap = Snapshot(L.NORMAL, depths={"high": 40, "normal": 0}, at=100.0,
                    drain=Drain(rate=60.0, at=100.0, saturated=False),
                    demand={"CRITICAL": 30.0, "HIGH": 120.0, "NORMAL": 180.0})
    assert snap.wait_for(P.HIGH) == pytest.approx(40 / (60.0 - OVERTAKE_MARGIN * 30.0))
    assert snap.wait_for(P.NORMAL) == math.inf
