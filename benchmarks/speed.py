"""B4: training throughput per method, FLOP utilisation, and prediction throughput (see ../shared/BENCHMARKS.md).

- Training: patch pixels per second for each method at one architecture (U-Net depth 2, 32 features,
  batch 16 x 64^2 in 2D), and that step's FLOPs (counted by torch) divided by step time, against the
  machine's measured float32 matmul peak.
- Pipeline: patches per second of the training sampler (64^2, in-memory data, sampling + augmentation, one
  thread), and training seconds per step at batch 16 (default network).
- Prediction: megapixels per second on a 2048 x 2048 image and on a Z x 512 x 512 volume (2D model
  slice by slice, and a 3D model), 1 pass and with 8x test-time augmentation.

    python benchmarks/speed.py --out benchmarks/results/speed.json
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from _common import base_parser, machine, save
from napari_selfdenoise import Denoiser
from napari_selfdenoise.core.methods import method_names


def matmul_peak(device: str, size: int = 4096, repeats: int = 5) -> float:
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return 2 * size**3 * repeats / (time.perf_counter() - start)


def training_speed(method: str, steps: int, device: str) -> dict:
    data = np.random.default_rng(0).random((8, 256, 256), dtype=np.float32)
    model = Denoiser(method, "SYX", steps=steps + 3, batch=16, patch=64, steps_per_epoch=10_000,
                     val_fraction=0.0, device=device)
    events = model.train(data)
    for _ in range(3):  # warm-up
        next(events)
    start_elapsed = model.state.elapsed
    for _ in range(steps):
        event = next(events)
    seconds = (event.elapsed - start_elapsed) / steps
    flops = _step_flops(model)
    return {"seconds_per_step": round(seconds, 4), "patch_pixels_per_second": round(16 * 64 * 64 / seconds),
            "gflop_per_step": round(flops / 1e9, 2), "achieved_gflops": round(flops / seconds / 1e9, 1)}


def sampler_speed(batch: int = 128, repeats: int = 200) -> dict:
    """Patches per second of ``PatchSampler.batch`` on an in-memory stack (the calling thread only)."""
    from napari_selfdenoise.core.normalize import Normalization
    from napari_selfdenoise.core.patches import PatchSampler, split_regions

    sources = [np.random.default_rng(0).random((8, 1, 512, 512), dtype=np.float32)]
    train, _, _ = split_regions(sources, (64, 64), 0.0)
    sampler = PatchSampler(sources, train, (64, 64), Normalization("meanstd", [0.5], [0.25]), seed=0)
    sampler.batch(batch)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        sampler.batch(batch)
        times.append(time.perf_counter() - start)
    # The mean is what this (shared) machine gave; the fastest batch estimates a quiet core.
    return {"batch": batch, "patch": 64, "patches_per_second": round(batch * repeats / sum(times)),
            "patches_per_second_best_batch": round(batch / min(times))}


def _step_flops(model) -> float:
    batch = torch.randn(16, 1, 64, 64, device=next(model.network.parameters()).device)
    counter = FlopCounterMode(display=False)
    with counter:
        loss = model.method.training_loss(model.network, batch, torch.Generator().manual_seed(0))
        loss.backward()
    model.network.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def prediction_speed(shape, axes: str, dims_model: int, tta: bool, device: str, tile=None, batch_size=None) -> dict:
    model = Denoiser("n2v2", "ZYX" if dims_model == 3 else "YX", steps=1, patch=32, patch_z=8, batch=2,
                     val_fraction=0.0, device=device)
    small = np.random.default_rng(0).random((16, 64, 64) if dims_model == 3 else (64, 64), dtype=np.float32)
    model.fit(small)
    image = np.random.default_rng(1).random(shape, dtype=np.float32)
    start = time.perf_counter()
    model.predict(image, axes=axes, tta=tta, tile=tile, batch_size=batch_size)
    seconds = time.perf_counter() - start
    return {"shape": list(shape), "axes": axes, "model": f"{dims_model}D", "tta": tta,
            "tile": tile or "default", "batch_size": batch_size or "default",
            "seconds": round(seconds, 2), "megapixels_per_second": round(image.size / seconds / 1e6, 3)}


def main():
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--volume-z", type=int, default=64)
    parser.add_argument("--skip-3d-model", action="store_true")
    parser.add_argument("--prediction-only", action="store_true", help="skip the training measurements")
    parser.add_argument("--pipeline-only", action="store_true",
                        help="only the sampler's patches/s and n2v2's training s/step")
    parser.add_argument("--only-2d-prediction", action="store_true", help="only the plain 2048^2 prediction run")
    parser.add_argument("--tile", type=int, default=None, help="prediction tile (default: the predictor's)")
    parser.add_argument("--batch-size", type=int, default=None, help="tiles per pass (default: the predictor's)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = {"benchmark": "B4 speed", "machine": machine()}
    peak = matmul_peak(args.device)
    results["matmul_peak_gflops"] = round(peak / 1e9, 1)
    if not args.prediction_only:
        torch.set_num_threads(1)
        results["sampler"] = sampler_speed()
        torch.set_num_threads(args.threads)
        print("sampler", results["sampler"], flush=True)
    if args.pipeline_only:
        results["training"] = {"n2v2": training_speed("n2v2", args.steps, args.device)}
        print(results["training"], flush=True)
        save(results, args.out)
        return
    results["training"] = {}
    for method in [] if args.prediction_only else method_names(include_classic=False):
        r = training_speed(method, args.steps, args.device)
        r["utilisation_percent"] = round(100 * r["achieved_gflops"] * 1e9 / peak, 1)
        results["training"][method] = r
        print(method, r, flush=True)
    runs = [((2048, 2048), "YX", 2, False), ((2048, 2048), "YX", 2, True),
            ((args.volume_z, 512, 512), "SYX", 2, False), ((args.volume_z, 512, 512), "SYX", 2, True)]
    if not args.skip_3d_model:
        runs += [((args.volume_z, 512, 512), "ZYX", 3, False)]
    if args.only_2d_prediction:
        runs = runs[:1]
    results["prediction"] = []
    for shape, axes, dims, tta in runs:
        r = prediction_speed(shape, axes, dims, tta, args.device, args.tile, args.batch_size)
        results["prediction"].append(r)
        print(r, flush=True)
    save(results, args.out)


if __name__ == "__main__":
    main()
