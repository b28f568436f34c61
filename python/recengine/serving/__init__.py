"""recengine.serving: a real inference server for the DeepRecInfra models on this machine.

:class:`Server` replays a query stream against real model forwards on worker threads with
bounded queues (shed queries counted, a failing worker reported, never a hang);
:class:`Accelerator` runs offloaded queries on CUDA or a latency model of a device;
:class:`RealServer` makes a server a :class:`recengine.sched.Backend` so DeepRecSched can
tune it. Needs torch.

Example::

    >>> import numpy as np, recengine.models as rm
    >>> from recengine.sched import Policy
    >>> server = Server(rm.build("ncf", scale=0.01), workers=1)
    >>> server.run(np.array([0.0]), np.array([64]), Policy(32)).queries
    1
"""

from .accelerator import Accelerator
from .backend import RealServer
from .server import Server, Service, WorkerError, idle_before

__all__ = ["Accelerator", "RealServer", "Server", "Service", "WorkerError", "idle_before"]
