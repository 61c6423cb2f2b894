"""Quality check for a training-pipeline change: n2s and nnet, the same number of steps, before vs after.

Trains each method self-supervised on one noisy BSD68 image (Gaussian sigma 25, ../shared/data) with the
default network and batch 16, and reports the PSNR of its prediction against the clean image, and the
training seconds per step. Run it on two checkouts (e.g. ``PYTHONPATH=/tmp/before/src``) to compare.

    python benchmarks/pipeline_check.py --steps 300 --images 2 --out benchmarks/results/pipeline_check.json
"""

from __future__ import annotations

import numpy as np
import torch
from _common import base_parser, machine, psnr, save
from bsd68 import load

from napari_selfdenoise import Denoiser


def main():
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--images", type=int, default=2, help="how many BSD68 images (one model each)")
    parser.add_argument("--methods", default="n2s,nnet")
    parser.add_argument("--features", type=int, default=32, help="U-Net width (default 32, the default network)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    _, noisy, clean = load(args.data)
    results = {"benchmark": "pipeline quality check", "machine": machine(), "steps": args.steps,
               "features": args.features, "runs": []}
    for method in args.methods.split(","):
        for k in range(args.images):
            model = Denoiser(method, "YX", steps=args.steps, batch=16, features=args.features, steps_per_epoch=100,
                             seed=0, device=args.device).fit(noisy[k])
            score = psnr(clean[k], model.predict(noisy[k]))
            run = {"method": method, "image": k, "psnr": round(score, 3), "noisy_psnr": round(psnr(clean[k], noisy[k]), 3),
                   "seconds_per_step": round(model.state.elapsed / model.state.step, 4)}
            results["runs"].append(run)
            print(run, flush=True)
    for method in args.methods.split(","):
        results[f"{method}_mean_psnr"] = round(float(np.mean([r["psnr"] for r in results["runs"]
                                                              if r["method"] == method])), 3)
    save(results, args.out)


if __name__ == "__main__":
    main()
