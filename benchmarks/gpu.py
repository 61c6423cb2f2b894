"""B7: proof on a GPU (see ../shared/BENCHMARKS.md), in under 8 minutes on one CUDA device.

1. Training, every method, batch 16 and 128, AMP on and off: patches/s, seconds per step, and the GPU's busy
   fraction (kernel time from the torch profiler over wall time, on a separate window of steps).
2. Prediction MP/s on 2048^2 (1 pass and 8x TTA) and on a 64 x 512 x 512 volume (3D model); peak GPU memory.
3. The default model on B1 (Train400 -> BSD68, sigma 25): PSNR at checkpoints of training time, the minutes
   to come within 0.2 dB of its final PSNR, and when it passes the published N2V 27.71 / Noise2Same 27.95 dB.
4. ``pytest -m cuda`` (tests/gpu).

Writes JSON and a markdown table; without a CUDA device it says so and exits with status 2.

    python benchmarks/gpu.py --out benchmarks/results/gpu.json
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from _common import REPO, base_parser, machine, psnr, save

PUBLISHED = {"N2V": 27.71, "Noise2Same": 27.95}


def _sync():
    torch.cuda.synchronize()


def _kernel_seconds(profiler) -> float:
    total = 0.0
    for event in profiler.key_averages():
        total += getattr(event, "self_device_time_total", None) or getattr(event, "self_cuda_time_total", 0.0)
    return total / 1e6  # microseconds


def training_throughput(method: str, batch: int, amp: bool, steps: int, profiled_steps: int) -> dict:
    from napari_selfdenoise import Denoiser

    data = np.random.default_rng(0).random((32, 256, 256), dtype=np.float32)
    warmup = 5
    model = Denoiser(method, "SYX", steps=warmup + steps + profiled_steps + 1, batch=batch, amp=amp, patch=64,
                     steps_per_epoch=10**6, val_fraction=0.0, curve_every=0, device="cuda")
    events = model.train(data)
    for _ in range(warmup):  # cuDNN autotuning, allocator warm-up
        next(events)
    _sync()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        next(events)
    _sync()
    seconds = (time.perf_counter() - start) / steps
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as profiler:
        start = time.perf_counter()
        for _ in range(profiled_steps):
            next(events)
        _sync()
        wall = time.perf_counter() - start
    busy = _kernel_seconds(profiler) / wall
    peak = torch.cuda.max_memory_allocated()
    events.close()
    return {"method": method, "batch": batch, "amp": amp, "seconds_per_step": round(seconds, 5),
            "patches_per_second": round(batch / seconds), "gpu_busy_fraction": round(busy, 3),
            "peak_memory_gib": round(peak / 1024**3, 3)}


def prediction_throughput() -> list[dict]:
    from speed import prediction_speed

    runs = [((2048, 2048), "YX", 2, False), ((2048, 2048), "YX", 2, True), ((64, 512, 512), "ZYX", 3, False)]
    results = []
    for shape, axes, dims, tta in runs:
        prediction_speed(shape, axes, dims, tta, "cuda")  # warm-up: cuDNN autotuning for the tile shapes
        torch.cuda.reset_peak_memory_stats()
        r = prediction_speed(shape, axes, dims, tta, "cuda")
        r["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 1024**3, 3)
        results.append(r)
        print(r, flush=True)
    return results


def convergence(data: Path, minutes: float, every: float) -> dict:
    """The default model (default method, settings and batch for the GPU) trained on B1 for ``minutes``,
    evaluated on BSD68 every ``every`` seconds of training."""
    from bsd68 import load

    from napari_selfdenoise import Denoiser

    train, noisy, clean = load(data)

    def score(model):
        return float(np.mean([psnr(c, model.predict(n, axes="YX")) for n, c in zip(noisy, clean)]))

    model = Denoiser(axes="SYX", time_limit=minutes * 60, steps_per_epoch=200, device="cuda")
    curve, next_check, last = [], every, None
    for event in model.train(train):
        last = event
        if event.elapsed >= next_check and not event.done:
            next_check += every
            curve.append({"minutes": round(event.elapsed / 60, 3), "step": event.step, "psnr": round(score(model), 3)})
            print("  ", curve[-1], flush=True)
    final = score(model)  # best-validation weights
    curve.append({"minutes": round(last.elapsed / 60, 3), "step": last.step, "psnr": round(final, 3), "final": True})
    within = next(p for p in curve if p["psnr"] >= final - 0.2)
    passes = {name: next((p["minutes"] for p in curve if p["psnr"] >= value), None)
              for name, value in PUBLISHED.items()}
    return {"method": model.config.method, "batch": model.config.batch, "final_psnr": round(final, 3),
            "steps": last.step, "minutes": round(last.elapsed / 60, 2),
            "minutes_to_within_0.2_db": within["minutes"], "minutes_to_pass_published": passes, "curve": curve}


def cuda_tests() -> dict:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "tests/gpu", "-p", "no:cacheprovider"],
                          cwd=REPO, capture_output=True, text=True)
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
    return {"returncode": proc.returncode, "seconds": round(time.perf_counter() - start, 1), "tail": tail}


def markdown(results: dict) -> str:
    lines = [(f"# B7 GPU ({results['machine'].get('gpu')}, commit {results['machine'].get('commit')}, "
              f"{results['machine'].get('date')})"), "", "| method | batch | AMP | s/step | patches/s | GPU busy | peak GiB |",
             "|---|---|---|---|---|---|---|"]
    for r in results.get("training", []):
        lines.append(f"| {r['method']} | {r['batch']} | {'on' if r['amp'] else 'off'} | {r['seconds_per_step']} | "
                     f"{r['patches_per_second']} | {r['gpu_busy_fraction']:.0%} | {r['peak_memory_gib']} |")
    lines += ["", "| prediction | model | TTA | MP/s | peak GiB |", "|---|---|---|---|---|"]
    for r in results.get("prediction", []):
        lines.append(f"| {'x'.join(map(str, r['shape']))} | {r['model']} | {r['tta']} | "
                     f"{r['megapixels_per_second']} | {r['peak_memory_gib']} |")
    if "convergence" in results:
        c = results["convergence"]
        lines += ["", (f"B1, default model ({c['method']}, batch {c['batch']}): {c['final_psnr']} dB after "
                       f"{c['minutes']} min ({c['steps']} steps); within 0.2 dB after {c['minutes_to_within_0.2_db']} "
                       f"min; published passed at (min): {c['minutes_to_pass_published']}")]
    if "cuda_tests" in results:
        lines += ["", (f"pytest -m cuda: exit {results['cuda_tests']['returncode']}: "
                       f"{results['cuda_tests']['tail'][-1] if results['cuda_tests']['tail'] else ''}")]
    return "\n".join(lines) + "\n"


def main():
    parser = base_parser(__doc__.splitlines()[0])
    parser.set_defaults(out=REPO / "benchmarks" / "results" / "gpu.json", device="cuda")
    parser.add_argument("--steps", type=int, default=30, help="timed training steps per configuration")
    parser.add_argument("--profiled-steps", type=int, default=10)
    parser.add_argument("--methods", default=None, help="comma-separated (default: every neural method)")
    parser.add_argument("--convergence-minutes", type=float, default=2.5, help="B1 training budget (0: skip)")
    parser.add_argument("--checkpoint-seconds", type=float, default=15.0)
    parser.add_argument("--skip-tests", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu.py: no CUDA device here; nothing was measured (run it on a machine with a GPU)", file=sys.stderr)
        return 2
    from napari_selfdenoise.core.methods import method_names

    results = {"benchmark": "B7 GPU", "machine": machine(),
               "gpu_memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 1024**3, 1)}
    started = time.perf_counter()
    methods = args.methods.split(",") if args.methods else method_names(include_classic=False)
    results["training"] = []
    for method in methods:
        for batch in (16, 128):
            for amp in (True, False):
                r = training_throughput(method, batch, amp, args.steps, args.profiled_steps)
                results["training"].append(r)
                print(r, flush=True)
    results["prediction"] = prediction_throughput()
    if args.convergence_minutes > 0:
        results["convergence"] = convergence(args.data, args.convergence_minutes, args.checkpoint_seconds)
    if not args.skip_tests:
        results["cuda_tests"] = cuda_tests()
    results["total_minutes"] = round((time.perf_counter() - started) / 60, 2)
    save(results, args.out)
    args.out.with_suffix(".md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
