"""Deployments on a local Ray cluster of 2 CPUs, small models, bounded time: the same scores
monolithic and disaggregated, every query accounted for, and nodes killed mid-stream."""

from __future__ import annotations

from typing import Iterator

import numpy as np
import pytest
import torch

ray = pytest.importorskip("ray")

import recengine.models as rm  # noqa: E402
from recengine.disagg import Deployment  # noqa: E402

SCALE = 0.01


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    yield
    ray.shutdown()


def _stream(n: int, rate: float, size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    return np.arange(n) / rate, np.full(n, size)


def _accounted(r: object, n: int) -> None:
    assert r.served + r.shed + r.failed == n  # type: ignore[attr-defined]
    assert np.isfinite(r.latency_ms[r.status == 0]).all()  # type: ignore[attr-defined]
    assert np.isinf(r.latency_ms[r.status != 0]).all()  # type: ignore[attr-defined]


@pytest.mark.parametrize("architecture", ["monolithic", "disaggregated"])
def test_a_deployment_serves_the_models_scores(local_ray: None, architecture: str) -> None:
    model = rm.build("din", scale=SCALE, seed=0)  # pooled and sequence features
    pool = model.sample_batch(256, seed=0)
    with Deployment("din", scale=SCALE, architecture=architecture, memory_nodes=2,
                    pool_size=256, timeout_s=20) as d:
        with torch.inference_mode():
            want = model(pool.rows(5, 25)).numpy()
        np.testing.assert_array_equal(d.scores(5, 20), want)  # bit for bit
        r = d.run(*_stream(40, 200.0))
        _accounted(r, 40)
        assert r.served == 40 and r.failed == 0 and r.shed == 0
        assert (r.bytes_per_query > 0) == (architecture == "disaggregated")
        assert r.as_run().p95 < 20_000
        with pytest.raises(ValueError, match="sizes"):
            d.run([0.0], [257])
        with pytest.raises(ValueError, match="non-decreasing"):
            d.run([0.1, 0.0], [1, 1])
        with pytest.raises(ValueError, match=r"no (memory|compute) node 5"):
            d.run([0.0], [1], kill_at=(0.0, "memory" if architecture == "disaggregated"
                                       else "compute", 5))


def test_killed_nodes_lose_no_query_and_come_back_correct(local_ray: None) -> None:
    model = rm.build("ncf", scale=SCALE, seed=0)
    pool = model.sample_batch(512, seed=0)
    with torch.inference_mode():
        want = model(pool.rows(0, 32)).numpy()
    with Deployment("ncf", scale=SCALE, architecture="disaggregated", compute_nodes=2,
                    memory_nodes=1, replicas=2, pool_size=512, timeout_s=20) as d:
        # A memory node's replica dies: its calls go to the other replica.
        n = 150
        r = d.run(*_stream(n, 100.0), kill_at=(0.3, "memory", 0))
        _accounted(r, n)
        assert r.failed == 0 and r.failovers >= 0
        (kind, node, killed, back), = r.outages
        assert (kind, node) == ("memory", 0) and back is not None and back > killed
        np.testing.assert_array_equal(d.scores(0, 32), want)
        # A compute node dies: its queries are sent again to the other one.
        r = d.run(*_stream(n, 100.0), kill_at=(0.3, "compute", 0))
        _accounted(r, n)
        assert r.failed == 0 and r.retried_served == int(r.retried.sum())
        assert r.outages[0][3] is not None
        _, qps = r.throughput(0.5)  # served queries a window, every one counted once
        assert round(qps.sum() * 0.5) == r.served
        for k in range(2):
            np.testing.assert_array_equal(d.scores(0, 32, node=k), want)


def test_a_lone_memory_node_down_fails_queries_clearly(local_ray: None) -> None:
    with Deployment("ncf", scale=SCALE, architecture="disaggregated", compute_nodes=1,
                    memory_nodes=1, pool_size=512, timeout_s=2.0, retries=0,
                    max_restarts=0) as d:
        n = 60
        r = d.run(*_stream(n, 100.0), kill_at=(0.1, "memory", 0))
        _accounted(r, n)
        assert r.failed > 0 and r.outages[0][3] is None  # not restarted: stays down
        assert all("memory node 0 is unavailable" in e or "within" in e
                   for e in r.errors.values()), set(r.errors.values())


def test_a_cancelled_probe_does_not_keep_a_replica_out(local_ray: None) -> None:
    """A compute node probes a replica it saw die; the probe is a child of the query that sent
    it, so Ray cancels it when the front end cancels that query at its deadline. The cancelled
    probe means "probe again", never an error for every later query."""
    import time

    from recengine.disagg.nodes import ComputeNode

    @ray.remote
    class Replica:
        def pid(self) -> int:
            return 1

    @ray.remote
    def hang() -> None:
        time.sleep(60)

    node = ComputeNode({"name": "ncf", "scale": SCALE, "seed": 0}, "monolithic",
                       pool_size=16)
    node.memory = [[Replica.remote()]]
    probe = hang.remote()
    ray.cancel(probe)
    node._down[(0, 0)] = probe
    assert node._up(0, 0) is False and node._down[(0, 0)] is None  # no error: probe again
    for _ in range(200):  # the new probe answers: the replica is back in the rotation
        if node._up(0, 0):
            break
        time.sleep(0.05)
    assert (0, 0) not in node._down


def test_bad_deployments_are_refused() -> None:
    with pytest.raises(ValueError, match="architecture"):
        Deployment("ncf", architecture="both")
    with pytest.raises(ValueError, match="compute_nodes"):
        Deployment("ncf", compute_nodes=0)
    with pytest.raises(ValueError, match="at most"):
        Deployment("ncf", memory_nodes=10**6)
    with pytest.raises(ValueError, match="timeout_s"):
        Deployment("ncf", timeout_s=0)
    with pytest.raises(ValueError, match="model"):
        Deployment("nope")
