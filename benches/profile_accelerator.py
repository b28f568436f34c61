"""Profile the eight DeepRecInfra models on a CUDA device: the accelerator latency curves that
``recengine serve --accelerator modeled --accelerator-curves FILE`` replays on any machine.

    python benches/profile_accelerator.py --out benches/results/accelerator_h100.json

Each model is built at ``--scale`` (tables and weights on the device) and timed at DeepRecSys's
batch sizes (1, 4, 16, 64, 256, 1024): the median of ``--repeat`` forwards after a warm-up, input
copy from the host included, synchronised (``Accelerator.run``). The curves interpolate in
log(batch), as DeepRecSys's model.
"""

from __future__ import annotations

import argparse
import json

import recengine.models as rm
import torch
from recengine.sched import ACCELERATOR_BATCHES, profile
from recengine.serving import Accelerator


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--scale", type=float, default=rm.DEFAULT_SCALE)
    p.add_argument("--repeat", type=int, default=20)
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device")
    name = torch.cuda.get_device_name()
    curves = {}
    for model_name in rm.model_names():
        acc = Accelerator.cuda(rm.build(model_name, scale=args.scale))
        pool = acc.model.sample_batch(max(ACCELERATOR_BATCHES), seed=0)
        curve = profile(lambda b, a=acc, p=pool: a.run(p.rows(0, b)), ACCELERATOR_BATCHES,
                        args.repeat, budget_s=60.0, label=f"{model_name} on {name}")
        curves[model_name] = {**curve.to_dict(), "interpolation": "log"}
        print(model_name, " ".join(f"{m:.3f}" for m in curve.ms), flush=True)
        del acc
        torch.cuda.empty_cache()
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(curves, f, indent=1)


if __name__ == "__main__":
    main()
