"""RecNMP's SLS latency curve for serving studies (recengine.nmp.curve)."""

from __future__ import annotations

import pytest
from recengine.nmp import SLSCurve, profile_sls
from recengine.sched import LatencyCurve


@pytest.mark.parametrize("model,least", [("rmc1", 3.0), ("wnd", 1.2)])
def test_the_sls_curve_grows_with_the_batch_and_nmp_beats_the_host(model: str,
                                                                   least: float) -> None:
    """rmc1 pools ~80 rows a bag, so RecNMP returns little over the channel; wnd pools few,
    so its gain is smaller."""
    curve = profile_sls(model, batches=(1, 4, 16, 64), table_mb=16)
    for ms in (curve.nmp_ms, curve.host_ms):
        assert all(a <= b for a, b in zip(ms, ms[1:])), ms
    assert curve.nmp_ms[-1] > curve.nmp_ms[0]
    assert all(s > least for s in curve.speedup), curve.speedup
    assert curve.nmp()(64) == pytest.approx(curve.nmp_ms[-1])
    assert curve.host()(4) == pytest.approx(curve.host_ms[1])


def test_a_cpu_plus_nmp_server_keeps_the_dense_part_and_scales_the_sls_part() -> None:
    curve = SLSCurve("m", "recnmp", (1, 64), nmp_ms=(0.01, 0.1), host_ms=(0.02, 0.4))
    cpu = LatencyCurve((1, 64), (1.0, 8.0), "cpu")
    both = curve.on_cpu(cpu, sls_fraction=0.5)
    # 1 - f of the time stays; the SLS half shrinks by nmp / host (1/2 at 1, 1/4 at 64).
    assert both.ms == pytest.approx((0.5 + 0.5 * 0.5, 4.0 + 4.0 * 0.25))
    assert curve.on_cpu(cpu, sls_fraction=0.0).ms == cpu.ms
    assert both.label == "cpu + recnmp"
    with pytest.raises(ValueError, match="sls_fraction"):
        curve.on_cpu(cpu, sls_fraction=1.5)


def test_bad_curves_and_profiles_are_refused() -> None:
    with pytest.raises(ValueError, match="increasing"):
        profile_sls("rmc1", batches=(4, 4))
    with pytest.raises(ValueError, match="unknown timing"):
        profile_sls("rmc1", batches=(1,), timing="exact")
    with pytest.raises(ValueError, match="unknown preset"):
        profile_sls("rmc1", batches=(1,), system="hbm")
    with pytest.raises(ValueError, match="stream"):
        profile_sls("rmc1", batches=(1,), stream=0)
    with pytest.raises(ValueError, match="one NMP and one host time"):
        SLSCurve("m", "recnmp", (1, 2), (1.0,), (1.0, 2.0))
    with pytest.raises(ValueError, match="positive"):
        SLSCurve("m", "recnmp", (1,), (0.0,), (1.0,))


def test_the_module_example_runs() -> None:
    import doctest

    from recengine.nmp import curve

    result = doctest.testmod(curve)
    assert result.attempted >= 4 and result.failed == 0


def test_the_curve_is_timed_on_warm_rank_caches() -> None:
    """The last batch of a stream finds the RankCaches warm: faster than a cold first batch
    of the same size (the host, without a cache, is not)."""
    cold = profile_sls("rmc1", batches=(32,), table_mb=8, stream=1)
    warm = profile_sls("rmc1", batches=(32,), table_mb=8, stream=4)
    assert warm.nmp_ms[0] < 0.97 * cold.nmp_ms[0]
    assert warm.host_ms[0] == pytest.approx(cold.host_ms[0], rel=0.05)
