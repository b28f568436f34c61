"""Profile the eight DeepRecInfra models on a CUDA device: the accelerator latency curves that
``recengine serve --accelerator modeled --accelerator-curves FILE`` replays on any machine.

    python benches/profile_accelerator.py --out benches/results/accelerator_h100.json
    python benches/profile_accelerator.py --part dense --out dense.json

Each model is built at ``--scale`` (tables and weights on the device) and timed at DeepRecSys's
batch sizes (1, 4, 16, 64, 256, 1024): the median of ``--repeat`` forwards after a warm-up, input
copy from the host included, synchronised (``Accelerator.run``). The curves interpolate in
log(batch), as DeepRecSys's model.

``--part dense`` times the model's dense part alone (``RecModel.dense_part``, as a server
runs it when the lookups stay on the CPU): the vectors looked up on the CPU beforehand, the
time covers their copy to the device, the dense layers and the scores' copy back
(``Accelerator.run_dense``).
"""

from __future__ import annotations

import argparse
import json

import recengine.models as rm
import torch
from recengine.models import Batch
from recengine.sched import ACCELERATOR_BATCHES, profile
from recengine.serving import Accelerator


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--scale", type=float, default=rm.DEFAULT_SCALE)
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--part", choices=("whole", "dense"), default="whole",
                   help="time whole queries (default) or the dense part alone")
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device")
    name = torch.cuda.get_device_name()
    curves = {}
    for model_name in rm.model_names():
        model = rm.build(model_name, scale=args.scale)
        acc = Accelerator.cuda(model)
        pool = model.sample_batch(max(ACCELERATOR_BATCHES), seed=0)
        if args.part == "whole":
            def run(b: int, a: Accelerator = acc, p: Batch = pool) -> None:
                a.run(p.rows(0, b))
        else:
            with torch.inference_mode():  # looked up on the CPU, outside the timing
                looked_up = {b: (model.embed(pool.rows(0, b)), pool.rows(0, b).dense)
                             for b in ACCELERATOR_BATCHES}

            def run(b: int, a: Accelerator = acc,
                    v: dict[int, tuple[dict[str, torch.Tensor], torch.Tensor]] = looked_up
                    ) -> None:
                a.run_dense(*v[b])
        curve = profile(run, ACCELERATOR_BATCHES, args.repeat, budget_s=60.0,
                        label=f"{model_name} {args.part} on {name}")
        curves[model_name] = {**curve.to_dict(), "interpolation": "log"}
        print(model_name, " ".join(f"{m:.3f}" for m in curve.ms), flush=True)
        del acc, model
        torch.cuda.empty_cache()
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(curves, f, indent=1)


if __name__ == "__main__":
    main()
