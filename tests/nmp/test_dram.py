"""The DDR4 model: traces meet the timing, reads are all served, results are deterministic and
thread-count independent, banks and the data bus bound the host, bad configs fail clearly."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import recengine
from hypothesis import given, settings
from hypothesis import strategies as st
from recengine.nmp.dram import DramConfig, run, validate

configs = st.builds(
    DramConfig,
    channels=st.integers(1, 3),
    dimms_per_channel=st.integers(1, 2),
    ranks_per_dimm=st.integers(1, 2),
    bank_groups=st.integers(1, 4),
    banks_per_group=st.integers(1, 4),
    row_bytes=st.sampled_from([1024, 8192]),
    queue_depth=st.integers(1, 16),
)


@settings(max_examples=60, deadline=None)
@given(configs, st.lists(st.integers(0, 2**22), min_size=0, max_size=400), st.booleans())
def test_every_trace_meets_the_timing_and_serves_every_read(cfg: DramConfig, lines: list[int],
                                                          sequential: bool) -> None:
    addrs = np.array(sorted(lines) if sequential else lines, dtype=np.int64) * 64
    r = run(addrs, cfg, trace=True)
    assert r.reads == len(lines) and r.bytes_read == 64 * len(lines)
    for tr in r.traces:
        validate(tr, cfg)
        kinds = np.bincount(tr[:, 1], minlength=3) if len(tr) else np.zeros(3, int)
        # Every ACT opens a row some read uses; every PRE closes an opened row.
        assert kinds[2] <= kinds[0] <= kinds[1]
    assert sum(len(t[t[:, 1] == 1]) for t in r.traces) == len(lines)


def test_the_validator_catches_violations() -> None:
    cfg = DramConfig(channels=1)
    addrs = (np.random.default_rng(0).integers(0, 2**24, 300) * 64).astype(np.int64)
    tr = run(addrs, cfg, trace=True).traces[0]
    rd = int(np.flatnonzero(tr[:, 1] == 1)[0])
    early = tr.copy()
    early[rd, 0] = early[rd - 1, 0]  # two commands in one cycle
    with pytest.raises(ValueError, match="one cycle"):
        validate(early, cfg)
    closed = tr.copy()
    closed[rd, 5] += 1  # a read of a row that is not open
    with pytest.raises(ValueError, match="closed bank or another row"):
        validate(closed, cfg)
    with pytest.raises(ValueError, match="outside"):
        validate(np.array([[0, 0, 9, 0, 0, 0]]), cfg)


def test_results_do_not_depend_on_the_thread_count() -> None:
    addrs = (np.random.default_rng(1).integers(0, 2**26, 20000) * 64).astype(np.int64)
    before = recengine.get_num_threads()
    try:
        recengine.set_num_threads(1)
        one = run(addrs, trace=True)
        recengine.set_num_threads(2)
        two = run(addrs, trace=True)
    finally:
        recengine.set_num_threads(before)
    assert one.channels == two.channels
    assert all(np.array_equal(a, b) for a, b in zip(one.traces, two.traces))


def test_the_host_is_bound_by_banks_or_by_the_data_bus() -> None:
    # Few banks: random rows are bank-bound, and more ranks (more banks) help. Every run is
    # bound below by the one data bus: a burst of tBL cycles per read. (That more ranks never
    # slow the emulated NMP down is a test of the NMP model, which runs ranks in parallel.)
    addrs = (np.random.default_rng(2).integers(0, 2**28, 20000) * 64).astype(np.int64)
    base = DramConfig(channels=1, bank_groups=1, banks_per_group=2, ranks_per_dimm=1)
    cycles = [run(addrs, replace(base, dimms_per_channel=d)).cycles for d in (1, 2, 4)]
    assert cycles[0] > cycles[1] > cycles[2] >= 20000 * base.tbl


def test_row_hits_beat_row_conflicts() -> None:
    cfg = DramConfig(channels=1)
    streaming = run(np.arange(0, 64 * 4096, 64), cfg)
    stride = cfg.row_bytes * cfg.bank_groups * cfg.banks_per_group * 4  # same bank, new row
    conflicting = run(np.arange(4096, dtype=np.int64) * stride, cfg)
    assert streaming.row_hit_rate > 0.95 and conflicting.row_hit_rate == 0
    assert conflicting.cycles > 3 * streaming.cycles


def test_bad_configs() -> None:
    with pytest.raises(ValueError, match="ranks_per_dimm"):
        run([0], DramConfig(ranks_per_dimm=0))
    with pytest.raises(ValueError, match="row_bytes"):
        run([0], DramConfig(row_bytes=100))
    with pytest.raises(ValueError, match="tck_ns"):
        run([0], replace(DramConfig(), tck_ns=0.0))
    with pytest.raises(ValueError, match="negative"):
        run([-64])
    with pytest.raises(ValueError, match="unknown DRAM setting"):
        recengine._core.dram_run(np.zeros(1, np.int64), {"speed": 1})


def test_the_settings_and_defaults_are_the_cores() -> None:
    """DramConfig's fields and defaults are read from the core, and the core refuses a
    setting it does not know by name."""
    import dataclasses

    from recengine import _core
    from recengine.nmp.emulator import NMP_DEFAULTS, NMPConfig

    defaults = _core.dram_defaults()
    config = DramConfig()
    assert [f.name for f in dataclasses.fields(DramConfig)] == list(defaults)
    assert dataclasses.asdict(config) == defaults
    nmp = NMPConfig()
    for name in ("nmp", "vector_bytes", "cache_bytes", "hot_threshold", "table_aware"):
        assert getattr(nmp, name) == NMP_DEFAULTS[name]
    with pytest.raises(ValueError, match="unknown DRAM setting"):
        _core.dram_run(np.arange(0, 640, 64), {"voltage": 1.2})
    with pytest.raises(ValueError, match="non-negative integer"):
        _core.dram_run(np.arange(0, 640, 64), {"channels": 1.5})


@pytest.mark.parametrize("field, value, match", [
    (0, -1, "negative field"), (5, -3, "negative field"), (2, -1, "negative field"),
    (1, 7, "unknown command kind 7"),
])
def test_a_trace_row_with_a_bad_field_is_refused(field: int, value: int, match: str) -> None:
    """Every field of a trace row is checked: a negative cycle, row, rank or bank, or an
    unknown command code, raises instead of wrapping around."""
    r = run(np.arange(0, 64 * 8, 64), DramConfig(channels=1), trace=True)
    trace = r.traces[0].copy()
    trace[0, field] = value
    with pytest.raises(ValueError, match=match):
        validate(trace, DramConfig(channels=1))


@pytest.mark.parametrize("timing", ["command", "fast"])
def test_absurd_timing_values_are_refused_before_any_cycle_count_can_wrap(timing: str) -> None:
    from recengine import _core
    from recengine.nmp import NMPConfig, Trace, emulate

    with pytest.raises(ValueError, match="tras = 18446744073709551615 cycles is more than"):
        _core.dram_run(np.arange(0, 640, 64), {"tras": 2**64 - 1})
    trace = Trace.synthetic([1000], bags=4, pooling=8, seed=0)
    cfg = NMPConfig(dram=DramConfig(tfaw=2**40), timing=timing)
    with pytest.raises(ValueError, match="tfaw"):
        emulate(trace, cfg)
    # The largest value allowed runs: every row miss waits 2^20 cycles for its precharge.
    big = NMPConfig(dram=DramConfig(trp=2**20), timing=timing, cache_bytes=0)
    res = emulate(Trace.synthetic([100_000], bags=8, pooling=20, seed=0), big).raw
    assert res["precharges"] > 0 and res["cycles"] > 2**20


@pytest.mark.parametrize("changes, match", [
    ({"bank_groups": 2**40}, "bank_groups = 1099511627776 is more than"),
    ({"channels": 2**17}, "channels = 131072 is more than"),
    ({"dimms_per_channel": 2**12, "ranks_per_dimm": 2**12}, "banks is more than"),
])
def test_absurd_counts_are_refused_before_any_bank_state_is_allocated(
        changes: dict[str, int], match: str) -> None:
    from recengine import _core
    from recengine.nmp import NMPConfig, Trace, emulate

    with pytest.raises(ValueError, match=match):
        _core.dram_run(np.arange(0, 640, 64), changes)
    with pytest.raises(ValueError, match=match):
        emulate(Trace.synthetic([1000], bags=2, pooling=4), NMPConfig(dram=DramConfig(**changes)))
