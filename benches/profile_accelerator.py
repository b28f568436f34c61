"""Profile the eight R2 models on a CUDA device: the accelerator latency curves that
``recengine serve --accelerator modeled --accelerator-curves FILE`` replays on any machine.

    python benches/profile_accelerator.py --out benches/results/accelerator_h100.json

Each model is built at ``--scale`` (tables and weights on the device) and timed at R3's batch
sizes (1, 4, 16, 64, 256, 1024): the median of ``--repeat`` forwards, input copy from the
host included, synchronised. The curves interpolate in log(batch), as DeepRecSys's model.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import recengine.models as rm
import torch
from recengine.models import Batch
from recengine.sched import ACCELERATOR_BATCHES


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--scale", type=float, default=rm.DEFAULT_SCALE)
    p.add_argument("--repeat", type=int, default=20)
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device")
    dev = torch.device("cuda")
    name = torch.cuda.get_device_name(dev)
    curves = {}
    for model_name in rm.model_names():
        model = rm.build(model_name, scale=args.scale).to(dev).eval()
        pool = model.sample_batch(max(ACCELERATOR_BATCHES), seed=0)
        ms = []
        with torch.inference_mode():
            for b in ACCELERATOR_BATCHES:
                part = pool.rows(0, b)
                times = []
                for _ in range(args.repeat + 2):
                    t0 = time.perf_counter()
                    model(Batch(part.dense.to(dev), [s.to(dev) for s in part.sparse]))
                    torch.cuda.synchronize(dev)
                    times.append((time.perf_counter() - t0) * 1e3)
                ms.append(float(np.median(times[2:])))
        curves[model_name] = {"batches": list(ACCELERATOR_BATCHES), "ms": ms,
                              "label": f"{model_name} on {name}", "interpolation": "log"}
        print(model_name, " ".join(f"{m:.3f}" for m in ms), flush=True)
        del model
        torch.cuda.empty_cache()
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(curves, f, indent=1)


if __name__ == "__main__":
    main()
