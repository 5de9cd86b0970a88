"""The circuit breaker in front of IVH, and what a refused signature says about the clock."""

from __future__ import annotations

import re

import httpx
import pytest

from bot.circuit import Circuit
from bot.ivh import IvhClient, IvhError, RetryPolicy
from bot.sim import RunningSimulator
from bot.sim.state import Fault


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_the_threshold_and_lets_one_trial_through():
    clock = Clock()
    circuit = Circuit("x", threshold=3, cooldown=10, max_cooldown=40, clock=clock)
    for _ in range(2):
        circuit.failed()
    assert circuit.allow()
    circuit.failed()
    assert not circuit.allow()
    clock.now = 10.0
    assert circuit.allow() and not circuit.allow()  # one trial at a time
    circuit.failed()  # the trial failed: twice as long
    clock.now = 29.0
    assert not circuit.allow()
    clock.now = 30.0
    assert circuit.allow()
    circuit.succeeded()
    assert circuit.allow() and circuit.allow()


def test_cooldown_is_capped():
    clock = Clock()
    circuit = Circuit("x", threshold=1, cooldown=10, max_cooldown=25, clock=clock)
    circuit.failed()
    for _ in range(5):
        clock.now += 100
        assert circuit.allow()
        circuit.failed()
    clock.now += 25
    assert circuit.allow()


def client(sim: RunningSimulator, **options) -> IvhClient:
    return IvhClient(
        sim.url,
        sim.sim.appkey,
        sim.sim.access_token,
        retry=RetryPolicy(attempts=1),
        timeout=httpx.Timeout(2.0),
        **options,
    )


async def test_a_failing_ivh_is_not_hammered(sim: RunningSimulator):
    task = sim.sim.create_task()
    sim.sim.add_fault(Fault(action="getprogress", kind="http500", count=100))
    circuit = Circuit("IVH", threshold=3, cooldown=60)
    async with client(sim, circuit=circuit) as ivh:
        for _ in range(10):
            with pytest.raises(IvhError) as caught:
                await ivh.get_progress(task.task_id)
            assert caught.value.transient
    assert len(sim.sim.requests) == 3
    assert "circuit open" in caught.value.message


async def test_definite_answers_do_not_open_the_circuit(sim: RunningSimulator):
    circuit = Circuit("IVH", threshold=2, cooldown=60)
    async with client(sim, circuit=circuit) as ivh:
        for _ in range(5):
            with pytest.raises(IvhError) as caught:
                await ivh.get_progress("no_such_task")
            assert caught.value.not_found
    assert len(sim.sim.requests) == 5


async def test_a_refused_signature_names_the_clock_skew(sim: RunningSimulator):
    task = sim.sim.create_task()
    async with client(sim, clock=lambda: sim.sim.clock() + 3600) as ivh:
        with pytest.raises(IvhError) as caught:
            await ivh.get_progress(task.task_id)
    assert caught.value.code == 100005
    # The gateway's Date header has whole seconds: the skew shown is 3600 ± 1.
    assert re.search(r"clock is \+3(599|600|601) s off IVH's", caught.value.message)
    assert "NTP" in caught.value.message
