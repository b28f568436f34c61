"""``recengine hercules``: its config's errors, a run from saved profiles, and the cluster
rows built from Stage 1's capacities."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from recengine.hercules.profile import CpuProfile, counts
from recengine.hercules.schedule import Footprint
from recengine.hercules.study import HerculesConfig, iter_study, server_type, summarize_study
from recengine.sched import LatencyCurve

BATCHES = (1, 32, 128, 1024)


def _profile(model: str, cores: int) -> CpuProfile:
    one = LatencyCurve(BATCHES, tuple(0.02 + 0.004 * b for b in BATCHES))
    ks = counts(cores)
    return CpuProfile(model, cores, ks, tuple(one.scaled(1 / t ** 0.7) for t in ks), ks,
                      tuple(one.scaled(1 + 0.05 * k) for k in ks),
                      tuple(one.scaled(1 + 0.2 * k) for k in ks), Footprint(2**30, 2**20))


@pytest.fixture
def profiles(tmp_path: Path) -> str:
    path = tmp_path / "profiles.json"
    nmp = {"system": "recnmp", "batches": [1, 1024], "nmp_ms": [0.01, 1.0],
           "host_ms": [0.05, 5.0]}
    path.write_text(json.dumps({"scale": 0.05, "profiles": {
        m: _profile(m, 8).to_dict() for m in ("ncf", "wnd")}, "nmp": {"ncf": nmp, "wnd": nmp}}))
    return str(path)


def test_a_run_from_saved_profiles_gives_both_stages(profiles: str, tmp_path: Path) -> None:
    saved = tmp_path / "again.json"
    config = HerculesConfig(models=["ncf", "wnd"], profiles=profiles, servers=["cpu", "cpu-nmp"],
                            batch_sizes=(32, 128, 1024), queries=200, save_profiles=str(saved),
                            available={"cpu-nmp": 3})
    rows = list(iter_study(config))
    stage1 = [r for r in rows if r["kind"] == "schedule"]
    cluster = [r for r in rows if r["kind"] == "cluster"]
    assert [(r["model"], r["server"]) for r in stage1] == [
        ("ncf", "cpu"), ("ncf", "cpu-nmp"), ("wnd", "cpu"), ("wnd", "cpu-nmp")]
    for r in stage1:
        assert r["cores"] == 8 and r["gap"] is not None and 0 <= r["gap"] <= 0.02
        assert r["qps"] >= r["naive_qps"] > 0 and r["evaluations"] < r["grid_evaluations"]
        # Threads share one copy of the full-scale tables (1 GiB at scale 0.05: 20 GiB).
        assert r["memory_gb_threads"] == pytest.approx(20, rel=0.01)
        assert r["memory_gb_processes"] == pytest.approx(
            r["config"]["instances"] * r["memory_gb_threads"])
    assert {(r["scheduler"], r["objective"]) for r in cluster} == {
        (s, o) for s in ("hercules", "greedy", "oblivious") for o in ("capacity", "power")}
    for r in cluster:
        assert r["meets"]
        assert r["servers_per_slot"]["cpu-nmp"] and max(r["servers_per_slot"]["cpu-nmp"]) <= 3
        if r["scheduler"] == "hercules":
            assert r["capacity_saving"] >= -1e-9 if r["objective"] == "capacity" else \
                r["power_saving"] >= -1e-9
    assert json.loads(saved.read_text())["profiles"].keys() == {"ncf", "wnd"}
    summary = summarize_study(rows)
    assert summary["within_2pct"] == summary["compared"] == 4


def test_the_config_refuses_what_it_cannot_run(profiles: str) -> None:
    with pytest.raises(ValueError, match="unknown server type"):
        HerculesConfig(servers=["tpu"])
    with pytest.raises(ValueError, match="does not run"):
        HerculesConfig(servers=["cpu"], available={"cpu-gpu": 2})
    with pytest.raises(ValueError, match="needs that many here"):
        HerculesConfig(cores=10**6)
    with pytest.raises(ValueError, match="no profiles file"):
        HerculesConfig(profiles="/nonexistent.json")
    with pytest.raises(ValueError, match="models the study does not run"):
        HerculesConfig(models=["ncf"], check=["wnd"])
    with pytest.raises(ValueError, match="trough"):
        HerculesConfig(trough=0)
    with pytest.raises(ValueError, match="has no profile of rmc1"):
        list(iter_study(HerculesConfig(models=["rmc1"], profiles=profiles)))


def test_server_types_are_documented_inputs() -> None:
    cpu, gpu, nmp = (server_type(n, 16) for n in ("cpu", "cpu-gpu", "cpu-nmp"))
    assert (cpu.idle_w, cpu.peak_w) == (98.0, 242.0)
    assert gpu.peak_w - cpu.peak_w == 700 and nmp.peak_w - cpu.peak_w == 24
    assert gpu.device == "gpu" and nmp.device == "nmp" and cpu.cores == 16


def test_the_chosen_schedule_is_served_on_the_real_server() -> None:
    config = HerculesConfig(models=["ncf"], servers=["cpu"], scale=0.01, cores=1,
                            profile_batches=(1, 32, 128, 1024), profile_span_s=0.02,
                            threads_only=True, batch_sizes=(32, 1024), queries=100,
                            no_grid=True, check=["ncf"], check_confirm=0, target_scale=4.0)
    row = next(r for r in iter_study(config) if r["kind"] == "schedule")
    assert row["real_qps"] > 0 and row["real_gap"] > -1
    assert row["real_resident_gb"] is None or row["real_resident_gb"] > 0
