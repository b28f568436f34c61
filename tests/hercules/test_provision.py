"""Hercules' provisioning: the integer program against the greedy and oblivious baselines."""

from __future__ import annotations

import doctest
import importlib

import numpy as np
import pytest
import recengine.hercules
from hypothesis import given, settings
from hypothesis import strategies as st
from recengine.hercules import ServerType, diurnal, greedy, oblivious, provision

provision_module = importlib.import_module("recengine.hercules.provision")

CPU = ServerType("cpu", idle_w=100, peak_w=300)
GPU = ServerType("gpu", idle_w=150, peak_w=700, available=1)


def test_the_program_gives_a_scarce_fast_server_to_the_model_that_gains_most() -> None:
    """One fast server: greedy gives it to the model with the larger peak, which barely
    needs it; the program gives it to the one that is slow everywhere else."""
    capacity = {("x", "gpu"): 10.0, ("x", "cpu"): 9.0, ("y", "gpu"): 10.0, ("y", "cpu"): 1.0}
    loads = {"x": [10.0], "y": [9.0]}
    g = greedy(loads, capacity, [CPU, GPU])
    best = provision(loads, capacity, [CPU, GPU])
    assert g.servers == 1 + 9
    assert best.servers == 1 + 2
    assert best.counts[0].tolist() == [[2, 0], [0, 1]]
    assert best.meets() and g.meets()


def test_power_objective_prefers_the_efficient_type() -> None:
    capacity = {("x", "cpu"): 100.0, ("x", "gpu"): 400.0}
    gpu = ServerType("gpu", idle_w=150, peak_w=700)
    loads = {"x": [400.0]}
    assert provision(loads, capacity, [CPU, gpu]).counts[0, 0].tolist() == [0, 1]
    # 4 CPUs: 1200 W; 1 GPU: 700 W; both objectives pick the GPU here, and power still does
    # when the GPU draws more than one CPU.
    assert provision(loads, capacity, [CPU, gpu], "power").power_w == 700


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 4), st.integers(1, 3), st.integers(1, 6), st.integers(0, 2**31 - 1),
       st.sampled_from(["capacity", "power"]), st.sampled_from([0.0, 0.2]))
def test_the_program_meets_every_load_and_never_needs_more_than_greedy(
        models: int, types: int, slots: int, seed: int, objective: str, headroom: float) -> None:
    rng = np.random.default_rng(seed)
    servers = [ServerType(f"s{i}", idle_w=float(rng.uniform(50, 150)),
                          peak_w=float(rng.uniform(200, 800)),
                          available=None if i == 0 else int(rng.integers(0, 6)))
               for i in range(types)]
    capacity = {(f"m{m}", s.name): float(rng.uniform(50, 1000))
                for m in range(models) for s in servers if s.name == "s0" or rng.random() < 0.7}
    loads = {f"m{m}": rng.uniform(0, 3000, slots).tolist() for m in range(models)}
    g = greedy(loads, capacity, servers, objective, headroom)
    best = provision(loads, capacity, servers, objective, headroom)
    assert best.meets(headroom) and g.meets(headroom)
    assert best.cost(objective) <= g.cost(objective) + 1e-6
    ob = oblivious(loads, capacity, servers, objective, headroom)
    assert ob.meets(headroom)
    assert best.cost(objective) <= ob.cost(objective) + 1e-6


def test_the_switch_limit_holds_and_costs_servers() -> None:
    servers = [CPU, ServerType("big", idle_w=100, peak_w=500)]
    capacity = {("a", "cpu"): 100.0, ("a", "big"): 250.0, ("b", "cpu"): 100.0,
                ("b", "big"): 250.0}
    # The two models take turns: without a limit the cluster moves every slot.
    loads = {"a": [2000.0, 0.0, 2000.0, 0.0], "b": [0.0, 2000.0, 0.0, 2000.0]}
    free = provision(loads, capacity, servers)
    capped = provision(loads, capacity, servers, max_switches=2)
    assert capped.meets()
    assert capped.switches.max() <= 2 < free.switches.max()
    assert capped.servers > free.servers
    with pytest.raises(ValueError, match="max_switches"):
        provision(loads, capacity, servers, max_switches=-1)


def test_a_plan_reports_capacity_power_and_energy() -> None:
    plan = provision({"x": [300.0, 100.0]}, {("x", "cpu"): 100.0}, [CPU])
    assert plan.counts[:, 0, 0].tolist() == [3, 1]
    assert (plan.servers, plan.peak_servers) == (4, 3)
    assert plan.power_w == pytest.approx((3 + 1) * 300 / 2)
    # Fully loaded servers draw their peak; each slot is 12 hours of a 2-slot day.
    assert plan.energy_kwh == pytest.approx(4 * 300 * 12 / 1e3)
    assert plan.switches.tolist() == [2, 0]


def test_diurnal_load_has_its_peak_trough_and_phase() -> None:
    load = diurnal(1000.0, phase=6, trough=0.2)
    assert load.shape == (24,) and int(load.argmax()) == 6
    assert load.max() == pytest.approx(1000.0) and load.min() == pytest.approx(200.0)
    for bad in ((-1.0,), (1.0, 0), (1.0, 24, 1.5)):
        with pytest.raises(ValueError):
            diurnal(*bad)


@pytest.mark.parametrize("kwargs, match", [
    ({"capacity": {("x", "cpu"): 0.0}}, "no available server type can serve x"),
    ({"capacity": {}}, "no available server type can serve x"),
    ({"capacity": {("x", "tpu"): 5.0}}, "unknown"),
    ({"servers": []}, "no server types"),
    ({"loads": {"x": [1.0], "y": [1.0, 2.0]}, "capacity": {("x", "cpu"): 1.0,
                                                          ("y", "cpu"): 1.0}}, "same slots"),
    ({"loads": {"x": [float("nan")]}}, "finite"),
    ({"objective": "cost"}, "unknown objective"),
    ({"headroom": -0.1}, "headroom"),
])
def test_bad_inputs_get_clear_errors(kwargs: dict, match: str) -> None:
    args = {"loads": {"x": [10.0]}, "capacity": {("x", "cpu"): 5.0}, "servers": [CPU],
            "objective": "capacity", "headroom": 0.0, **kwargs}
    for solver in (provision, greedy, oblivious):
        with pytest.raises(ValueError, match=match):
            solver(**args)


def test_a_load_the_servers_cannot_serve_names_the_slot_and_model() -> None:
    few = ServerType("cpu", idle_w=100, peak_w=300, available=2)
    loads = {"x": [100.0, 500.0]}
    capacity = {("x", "cpu"): 100.0}
    with pytest.raises(ValueError, match="slot 1: x needs 500"):
        provision(loads, capacity, [few])
    with pytest.raises(ValueError, match="slot 1"):
        greedy(loads, capacity, [few])
    with pytest.raises(ValueError, match="no single server type"):
        oblivious(loads, capacity, [few])
    with pytest.raises(ValueError, match="available must be"):
        ServerType("cpu", idle_w=1, peak_w=2, available=-1)
    with pytest.raises(ValueError, match="idle_w <= peak_w"):
        ServerType("cpu", idle_w=5, peak_w=2)


def test_the_module_examples_run() -> None:
    for module in (recengine.hercules, provision_module):
        assert doctest.testmod(module).failed == 0
