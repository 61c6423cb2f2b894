"""B4: training throughput per method, FLOP utilisation, and prediction throughput (see ../shared/BENCHMARKS.md).

- Training: patch pixels per second for each method at one architecture (U-Net depth 2, 32 features,
  batch 16 x 64^2 in 2D), and that step's FLOPs (counted by torch) divided by step time, against the
  machine's measured float32 matmul peak.
- Pipeline: patches per second of the training sampler (64^2, in-memory data, sampling + augmentation, one
  thread), and training seconds per step at batch 16 (default network).
- Prediction: megapixels per second of the default ``Denoiser.predict`` on a 2048 x 2048 image and on a
  Z x 512 x 512 volume (2D model slice by slice, and a 3D model), 1 pass and with 8x test-time
  augmentation, each against a bare eager float32 forward of the same network on the whole input in the
  same run (alternating; the ratio is what holds on a busy machine).

    python benchmarks/speed.py --out benchmarks/results/speed.json
"""

from __future__ import annotations

import time

import numpy as np
import torch
from _common import base_parser, machine, psnr, save
from torch.utils.flop_counter import FlopCounterMode

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
    from napari_selfdenoise.core.data.normalize import Normalization
    from napari_selfdenoise.core.data.patches import PatchSampler, split_regions

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


def bare_forward(network, shape, dims_model: int):
    """A bare eager float32 forward of the network on the whole input (one sample; channels_last in 2D,
    no_grad): the baseline prediction is measured against, in the same run."""
    x = torch.rand(1, 1, *shape)
    if dims_model == 2:
        x = x.contiguous(memory_format=torch.channels_last)
    network = network.float().eval()

    def run():
        with torch.no_grad():
            network(x)
    return run


def prediction_speed(shape, axes: str, dims_model: int, tta: bool, device: str, tile=None, batch_size=None,
                     repeats: int = 2, precision: str = "auto", compiled=None) -> dict:
    """Default ``Denoiser.predict`` (n2v2, depth 2, 32 features) against the bare whole-image forward,
    alternating, median of ``repeats``: the ratio is what holds on a busy machine. The bare forward runs on
    one 2D frame (``SYX`` stacks: scaled by the frame count), on the whole volume for a 3D model, and 8
    times for TTA."""
    model = Denoiser("n2v2", "ZYX" if dims_model == 3 else "YX", steps=1, patch=32, patch_z=8, batch=2,
                     val_fraction=0.0, device=device)
    small = np.random.default_rng(0).random((16, 64, 64) if dims_model == 3 else (64, 64), dtype=np.float32)
    model.fit(small)
    image = np.random.default_rng(1).random(shape, dtype=np.float32)
    frames = shape[0] if axes == "SYX" else 1
    bare = bare_forward(model.network, shape[1:] if axes == "SYX" else shape, dims_model)
    predictor = model.predictor(tile=tile, batch_size=batch_size, tta=tta, precision=precision, compiled=compiled)
    kernel = predictor.kernel(predictor.plan(image.shape[-dims_model:], samples=frames))
    predict_s, bare_s = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        model.predict(image, axes=axes, tta=tta, tile=tile, batch_size=batch_size, precision=precision,
                      compiled=compiled)
        predict_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        bare()
        bare_s.append((time.perf_counter() - start) * frames * (8 if tta else 1))
    seconds, bare_seconds = float(np.median(predict_s)), float(np.median(bare_s))
    return {"shape": list(shape), "axes": axes, "model": f"{dims_model}D", "tta": tta,
            "tile": tile or "default", "batch_size": batch_size or "default",
            "kernel": f"{kernel.precision}{' compiled' if kernel.compiled else ''}", "repeats": repeats,
            "seconds": round(seconds, 2), "megapixels_per_second": round(image.size / seconds / 1e6, 3),
            "bare_forward_megapixels_per_second": round(image.size / bare_seconds / 1e6, 3),
            "ratio_to_bare_forward": round(bare_seconds / seconds, 2)}


def bfloat16_psnr(data, steps: int, device: str) -> dict:
    """PSNR against the ground truth of a real denoising case (FMD Confocal_BPAE_R_mito, n2v2, default
    network trained for ``steps``): float32 against bfloat16 prediction of the same model, with and
    without TTA. The auto kernel uses bfloat16 only where this delta stays under 0.05 dB."""
    from fmd import load

    noisy, clean = load(data, "Confocal_BPAE_R_mito")
    model = Denoiser("n2v2", "YX", steps=steps, seed=0, device=device, curve_every=0).fit(noisy)
    result = {"image": "FMD Confocal_BPAE_R_mito", "steps": steps}
    for tta in (False, True):
        exact = psnr(clean, model.predict(noisy, tta=tta, precision="float32"))
        fast = psnr(clean, model.predict(noisy, tta=tta, precision="bfloat16"))
        key = "tta" if tta else "plain"
        result[key] = {"psnr_float32": round(exact, 4), "psnr_bfloat16": round(fast, 4),
                       "delta_db": round(fast - exact, 4)}
    return result


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
    parser.add_argument("--precision", default="auto", help="prediction precision: auto, float32, bfloat16")
    parser.add_argument("--compiled", choices=["auto", "yes", "no"], default="auto", help="torch.compile for prediction")
    parser.add_argument("--repeats", type=int, default=2, help="prediction runs (alternating with the bare forward)")
    parser.add_argument("--tta-size", type=int, default=2048, help="Y and X of the 8x TTA image")
    parser.add_argument("--skip-stack-tta", action="store_true", help="skip the 8x TTA run of the Z x 512 x 512 stack")
    parser.add_argument("--psnr-steps", type=int, default=0,
                        help="also train n2v2 on FMD mito for this many steps: bfloat16 vs float32 PSNR")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = {"benchmark": "B4 speed", "machine": machine()}
    if args.psnr_steps:
        results["bfloat16_psnr"] = bfloat16_psnr(args.data, args.psnr_steps, args.device)
        print("bfloat16_psnr", results["bfloat16_psnr"], flush=True)
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
    runs = [((2048, 2048), "YX", 2, False), ((args.tta_size, args.tta_size), "YX", 2, True),
            ((args.volume_z, 512, 512), "SYX", 2, False), ((args.volume_z, 512, 512), "SYX", 2, True)]
    if args.skip_stack_tta:
        runs = [r for r in runs if not (r[1] == "SYX" and r[3])]
    if not args.skip_3d_model:
        runs += [((args.volume_z, 512, 512), "ZYX", 3, False)]
    if args.only_2d_prediction:
        runs = runs[:1]
    results["prediction"] = []
    for shape, axes, dims, tta in runs:
        compiled = {"auto": None, "yes": True, "no": False}[args.compiled]
        r = prediction_speed(shape, axes, dims, tta, args.device, args.tile, args.batch_size, args.repeats,
                             args.precision, compiled)
        results["prediction"].append(r)
        print(r, flush=True)
    save(results, args.out)


if __name__ == "__main__":
    main()
