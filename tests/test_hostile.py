"""Hostile inputs and failing resources: sizes the machine cannot hold, files truncated or
replaced under a mapping, files that are not files. Each case that could kill the
interpreter (an abort on a failed allocation, a SIGBUS) runs in a child process, so a
regression fails its test instead of taking pytest down with it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from recengine import EmbeddingTable
from recengine.cache import ExpertCache


def in_child(code: str, address_space: int | None = None, timeout: float = 120) -> str:
    """Run ``code`` in a fresh interpreter (optionally under an address-space limit of
    ``address_space`` bytes); return its stdout, failing the test if it died of a signal or
    exited non-zero."""
    prelude = ""
    if address_space is not None:
        prelude = ("import resource\n"
                   f"resource.setrlimit(resource.RLIMIT_AS, ({address_space}, {address_space}))\n")
    done = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=timeout)
    if done.returncode < 0:
        pytest.fail(f"the child died of {signal.Signals(-done.returncode).name}:\n{done.stderr}")
    assert done.returncode == 0, done.stderr
    return done.stdout


# ---------------------------------------------------------------------------------------------
# allocations that cannot succeed raise MemoryError


_RAISES = """
import numpy as np, recengine
from recengine.cache import ExpertCache
def raises(f):
    try:
        f()
    except MemoryError as e:
        print("MemoryError", e)
    else:
        print("no error")
"""


def test_impossible_allocations_raise_memory_error() -> None:
    # Each asks for more than any address space holds (256 TB, 32 PB, 8 PB), so the
    # outcome does not depend on the machine's memory or overcommit policy.
    out = in_child(_RAISES + """
raises(lambda: recengine.EmbeddingTable.random(10**12, 64))
raises(lambda: ExpertCache.from_array(np.zeros((4, 8), np.float32), slots=10**15))
raises(lambda: recengine.EmbeddingTable.random(10, 4).lookup(np.zeros((2**50, 0), np.int64)))
t = recengine.EmbeddingTable.random(10, 4)
print(t.lookup(np.array([1]), offsets=np.array([0])).shape)  # the process goes on
""")
    lines = out.splitlines()
    assert [ln.split()[0] for ln in lines[:3]] == ["MemoryError"] * 3, out
    assert "a table's rows" in lines[0] and "slots" in lines[1] and "offsets" in lines[2], out
    assert lines[3] == "(1, 4)"


def test_allocations_past_an_address_space_limit_raise_memory_error() -> None:
    # Under a 1 GiB limit: 1.5 GiB of rows, a 4 GiB lookup output, a 1 GiB decoded copy.
    out = in_child(_RAISES + """
raises(lambda: recengine.EmbeddingTable.random(6 * 2**20, 64))
t = recengine.EmbeddingTable.random(100, 16)
raises(lambda: t.lookup(np.zeros((2**26, 0), np.int64)))
raises(lambda: recengine.EmbeddingTable.random(2**22, 64, "int4").to_numpy())
print(t.lookup(np.array([1]), offsets=np.array([0])).shape)
""", address_space=1 << 30)
    lines = out.splitlines()
    assert [ln.split()[0] for ln in lines[:3]] == ["MemoryError"] * 3, out
    assert lines[3] == "(1, 16)"


def _sparse_npy(path: str, rows: int, dim: int) -> None:
    """An ``.npy`` file of ``rows x dim`` float32 zeros that takes no disk space."""
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": "<f4", "fortran_order": False, "shape": (rows, dim)})
        f.truncate(f.tell() + rows * dim * 4)


def test_copies_of_a_huge_mapped_table_raise_memory_error(tmp_path: os.PathLike) -> None:
    path = os.path.join(tmp_path, "big.npy")
    rows, dim = 2**26, 64  # 16 GiB mapped, sparse on disk
    try:
        _sparse_npy(path, rows, dim)
    except OSError as e:
        pytest.skip(f"no sparse files here: {e}")
    limit = rows * dim * 4 + (2 << 30)  # the mapping fits; no copy of it does
    out = in_child(_RAISES + f"""
t = recengine.EmbeddingTable.load({path!r})
for f in (t.to_numpy, t.raw_rows, lambda: t.quantize("int8"), lambda: t.slice((0, {rows})),
          lambda: recengine.EmbeddingTable.load({path!r}, mmap=False)):
    raises(f)
print(t.lookup(np.array([{rows} - 1]), offsets=np.array([0])).sum())
""", address_space=limit)
    lines = out.splitlines()
    assert [ln.split()[0] for ln in lines[:5]] == ["MemoryError"] * 5, out
    assert lines[5] == "0.0"


# ---------------------------------------------------------------------------------------------
# mapped files truncated or replaced underneath


_TRUNCATED = """
import os, numpy as np, recengine
from recengine.cache import ExpertCache
path = {path!r}
t = recengine.EmbeddingTable.load(path)
held = recengine.EmbeddingTable.load(path, mmap=False)
want = held.lookup(np.array([999]), offsets=np.array([0]))
os.truncate(path, 300)
for f in (lambda: t.lookup(np.array([999]), offsets=np.array([0])), t.to_numpy, t.raw_rows,
          lambda: t.quantize("int4"), lambda: t.slice((0, 10)),
          lambda: t.save(path + ".copy.safetensors"),
          lambda: recengine.EmbeddingCollection([t]).lookup([np.array([1])],
                                                            offsets=[np.array([0])])):
    try:
        f()
        print("no error")
    except OSError as e:
        print("OSError", e)
print(bool((held.lookup(np.array([999]), offsets=np.array([0])) == want).all()))
"""


@pytest.mark.parametrize("fmt", ["npy", "safetensors"])
def test_a_truncated_mapped_file_raises_instead_of_sigbus(tmp_path: os.PathLike, fmt: str) -> None:
    path = os.path.join(tmp_path, f"t.{fmt}")
    x = np.random.default_rng(0).random((1000, 64), dtype=np.float32)
    if fmt == "npy":
        np.save(path, x)
    else:
        EmbeddingTable(x).save(path)
    lines = in_child(_TRUNCATED.format(path=path)).splitlines()
    assert len(lines) == 8
    for line in lines[:7]:
        assert line.startswith("OSError") and "shrank to 300 bytes" in line, line
        assert "renaming" in line
    assert lines[7] == "True"  # mmap=False read the rows into memory


def test_a_truncated_expert_file_raises_instead_of_sigbus(tmp_path: os.PathLike) -> None:
    path = os.path.join(tmp_path, "experts.npy")
    np.save(path, np.ones((64, 1000), np.float32))
    out = in_child(f"""
import os, numpy as np
from recengine.cache import ExpertCache
c = ExpertCache.from_npy({path!r}, slots=4)
with c.batch([3]) as s:
    print(c.view(np.float32, (1000,))[s[0]].sum())
os.truncate({path!r}, 1000)
try:
    with c.batch([60]):
        print("no error")
except OSError as e:
    print("OSError", e)
""")
    lines = out.splitlines()
    assert lines[0] == "1000.0"
    assert lines[1].startswith("OSError") and "shrank" in lines[1], out


def test_a_table_file_replaced_by_rename_keeps_the_old_rows(tmp_path: os.PathLike) -> None:
    path = os.path.join(tmp_path, "t.npy")
    np.save(path, np.ones((100, 8), np.float32))
    t = EmbeddingTable.load(path)
    np.save(os.path.join(tmp_path, "new.npy"), np.full((10, 8), 2, np.float32))
    os.replace(os.path.join(tmp_path, "new.npy"), path)
    assert t.lookup(np.array([99]), offsets=np.array([0])).tolist() == [[1.0] * 8]
    assert EmbeddingTable.load(path).lookup(np.array([9]), offsets=np.array([0]))[0, 0] == 2.0


# ---------------------------------------------------------------------------------------------
# paths that are not regular files


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
@pytest.mark.parametrize("suffix", [".npy", ".safetensors"])
def test_a_fifo_is_refused_not_waited_on(tmp_path: os.PathLike, suffix: str) -> None:
    fifo = os.path.join(tmp_path, "table" + suffix)
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="FIFO, not a regular file"):
        EmbeddingTable.load(fifo)
    with pytest.raises(ValueError, match="FIFO"):
        ExpertCache.from_npy(fifo, slots=2)
    with pytest.raises(ValueError, match="FIFO"):
        ExpertCache.from_file(fifo, 4, (2,), np.float32, slots=2)


def test_directories_and_devices_are_refused(tmp_path: os.PathLike) -> None:
    folder = os.path.join(tmp_path, "folder.npy")
    os.mkdir(folder)
    with pytest.raises(ValueError, match="directory"):
        EmbeddingTable.load(folder)
    if os.path.exists("/dev/zero"):
        device = os.path.join(tmp_path, "zero.safetensors")
        os.symlink("/dev/zero", device)
        with pytest.raises(ValueError, match="device"):
            EmbeddingTable.load(device)
    with pytest.raises(FileNotFoundError):
        EmbeddingTable.load(os.path.join(tmp_path, "missing.npy"))


# ---------------------------------------------------------------------------------------------
# traces


def test_a_trace_naming_a_huge_table_id_is_refused_at_once(tmp_path: os.PathLike) -> None:
    import time

    from recengine.nmp import Trace

    path = os.path.join(tmp_path, "trace.csv")
    with open(path, "w") as f:
        f.write("table,row\n0,5\n1000000000,3\n")
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="table ids go up to 1000000000"):
        Trace.load(path)
    assert time.perf_counter() - t0 < 5  # it ran for minutes
    with open(path, "w") as f:
        f.write("table,row,bag\n0,5,0\n2,7,1\n2,9,0\n")
    assert Trace.load(path).table_rows == [6, 1, 10]
    with pytest.raises(ValueError, match="names table 2 but table_rows sizes 1"):
        Trace.load(path, table_rows=[10])
    with pytest.raises(ValueError, match="differ in length"):
        Trace([4], np.zeros(2, np.int64), np.zeros(2, np.int64), np.zeros(3, np.int64),
              np.zeros(2, np.int64))


# ---------------------------------------------------------------------------------------------
# interpreter exit with recengine calls in flight


def test_daemon_threads_in_recengine_calls_do_not_abort_the_exit() -> None:
    # Python ends daemon threads when they next take the interpreter lock at exit; one in a
    # core call (the lock released) must end with it, not abort. (torch's autograd in a
    # daemon thread aborts the exit with "terminate called without an active exception" on
    # its own, with torch.nn.EmbeddingBag too: join such threads before exiting.)
    code = """
import threading, time, numpy as np, recengine
from recengine import functional as F
from recengine.cache import ExpertCache
t = recengine.EmbeddingTable.random(50000, 32)
idx = np.random.default_rng(0).integers(0, 50000, 50000)
offs = np.arange(0, 50000, 20)
g = np.ones((offs.size, 32), np.float32)
cache = ExpertCache.from_array(np.zeros((8, 1000), np.float32), slots=1, wait_s=30)
cache.fetch([0])
jobs = [lambda: t.lookup(idx, offsets=offs), lambda: F.embedding_bag_backward(g, 50000, idx, offs),
        lambda: recengine.EmbeddingTable.random(200000, 16), lambda: cache.fetch([1])]
def loop(job):
    while True:
        job()
for job in jobs:
    threading.Thread(target=loop, args=(job,), daemon=True).start()
time.sleep(0.3)
print("exit")
"""
    for _ in range(3):
        assert in_child(code).strip() == "exit"
