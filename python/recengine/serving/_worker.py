"""A worker process of :class:`recengine.serving.processes.WorkerProcesses`:
``python -m recengine.serving._worker FD`` serves sub-requests over the connection on
file descriptor ``FD``."""

from __future__ import annotations

import pickle
import sys
import time
import traceback
from multiprocessing.connection import Connection

from .allocator import steady_malloc
from .processes import DONE, SUB_REQUEST, TAG_DONE, TAG_ERROR, TAG_READY

__all__: list[str] = []


def _serve(conn: Connection) -> None:
    """A worker process: read its set-up, build the model and its input pool, say ready,
    then run sub-requests (:data:`SUB_REQUEST`) until an empty message or EOF, answering
    each with :data:`DONE`."""
    try:
        build_args, threads, distribution, seed, pool_size, fix_malloc, device = conn.recv()
        if fix_malloc:
            steady_malloc()
        import torch

        from .. import set_num_threads
        from ..models import build

        torch.set_num_threads(threads)
        set_num_threads(threads)
        from ..models import Batch

        model = build(**build_args)
        pool = model.sample_batch(pool_size, distribution=distribution, seed=seed)
        dev = torch.device(device)
        on_device = dev.type != "cpu"
        if on_device:  # an accelerator: the model there, each batch copied over
            model = model.to(dev)
        conn.send_bytes(TAG_READY)
        with torch.inference_mode():
            while data := conn.recv_bytes():
                run, i, k, lo, n = SUB_REQUEST.unpack(data)
                t0 = time.perf_counter()
                batch = pool.rows(lo, lo + n)
                if on_device:
                    batch = Batch(batch.dense.to(dev, non_blocking=True),
                                  [ids.to(dev, non_blocking=True) for ids in batch.sparse])
                    model(batch)
                    torch.cuda.synchronize(dev)
                else:
                    model(batch)
                t1 = time.perf_counter()
                conn.send_bytes(TAG_DONE + DONE.pack(run, i, k, n, t1 - t0, t1))
    except (EOFError, BrokenPipeError, ConnectionResetError, KeyboardInterrupt):
        return  # the parent went away or stopped us
    except BaseException as e:  # reported to the parent, which raises it as a WorkerError
        try:
            conn.send_bytes(TAG_ERROR + pickle.dumps((repr(e), traceback.format_exc())))
        except (OSError, ValueError, pickle.PicklingError):
            pass


if __name__ == "__main__":
    _serve(Connection(int(sys.argv[1])))
