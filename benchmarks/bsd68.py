"""B1: BSD68 with Gaussian noise sigma=25 at a fixed CPU wall-time budget (see ../shared/BENCHMARKS.md).

Trains each method self-supervised on the 400 noisy Train400 images only, evaluates the 68 noisy BSD68
images against their clean versions (PSNR, peak 255, no clipping) at checkpoints of training time, so the
result is a PSNR-against-wall-time curve. Evaluation time is not counted as training time.

    python benchmarks/bsd68.py --minutes 10 --methods n2s,n2v,n2v2,classic --out benchmarks/results/bsd68.json
"""

from __future__ import annotations

import os
import time

import numpy as np
import torch
from _common import add_training_arguments, auto_summary, base_parser, machine, psnr, save
from skimage.io import imread

from napari_selfdenoise import Denoiser


def load(data):
    train = np.load(data / "Train400" / "train400_gaussian25_seed400025_int16.npz")
    train = np.stack([train[k] for k in sorted(train.files)]).astype(np.float32)
    test = np.load(data / "BSD68" / "bsd68_gaussian25_seed68025_int16.npz")
    names = sorted(test.files)
    noisy = [test[k].astype(np.float32) for k in names]
    clean = [imread(data / "BSD68" / "clean" / f"{k}.png").astype(np.float32) for k in names]
    return train, noisy, clean


def evaluate(model, noisy, clean, tta=False) -> tuple[float, float]:
    start = time.perf_counter()
    scores = [psnr(c, model.predict(n, axes="YX", tta=tta)) for n, c in zip(noisy, clean)]
    return float(np.mean(scores)), time.perf_counter() - start


def run_neural(method, args, train, noisy, clean):
    model = Denoiser(method, "SYX", time_limit=args.minutes * 60, batch=args.batch, patch=args.patch,
                     lr=args.lr, lr_decay=args.lr_decay, depth=args.depth, features=args.features, steps_per_epoch=200, seed=args.seed,
                     device=args.device)
    checkpoints = sorted(float(m) * 60 for m in args.checkpoints.split(",") if float(m) < args.minutes)
    curve, last = [], None
    cpu_start = time.process_time()
    for event in model.train(train):
        last = event
        if checkpoints and event.elapsed >= checkpoints[0]:
            checkpoints.pop(0)
            cpu_start -= time.process_time()  # evaluation CPU time is not training time
            n = args.checkpoint_images or len(noisy)
            score, _ = evaluate(model, noisy[:n], clean[:n])
            cpu_start += time.process_time()
            curve.append({"minutes": round(event.elapsed / 60, 2), "step": event.step, "psnr": round(score, 3),
                          "images": n, "load_1min": round(os.getloadavg()[0], 2)})
            print(f"  {method}: {event.elapsed / 60:5.1f} min, step {event.step}: {score:.2f} dB", flush=True)
    # Share of the 2 cores this process really got while training: other load on the machine shows here.
    cpu_share = (time.process_time() - cpu_start) / (last.elapsed * torch.get_num_threads())
    score, predict_seconds = evaluate(model, noisy, clean)
    if args.checkpoint_images:  # the last point of the curve on the same subset as the others
        n = args.checkpoint_images
        subset = float(np.mean([psnr(c, model.predict(x, axes="YX")) for x, c in zip(noisy[:n], clean[:n])]))
        curve.append({"minutes": round(last.elapsed / 60, 2), "step": last.step, "psnr": round(subset, 3),
                      "images": n})
    curve.append({"minutes": round(last.elapsed / 60, 2), "step": last.step, "psnr": round(score, 3),
                  "images": len(noisy)})
    print(f"  {method}: final (best-validation weights) step {last.step}: {score:.2f} dB", flush=True)
    result = {"psnr": round(score, 3), "steps": last.step, "train_seconds": round(last.elapsed, 1),
              "seconds_per_step": round(last.elapsed / last.step, 4), "curve": curve,
              "predict_seconds_68_images": round(predict_seconds, 1), "cpu_share": round(cpu_share, 2)}
    if args.tta:
        result["psnr_tta"] = round(evaluate(model, noisy, clean, tta=True)[0], 3)
    return {**result, **auto_summary(model)}


def run_classic(noisy, clean):
    from napari_selfdenoise.core.methods.classic import calibrate_and_denoise

    start, scores, chosen = time.perf_counter(), [], []
    for n, c in zip(noisy, clean):
        denoised, result = calibrate_and_denoise(n, axes="YX")
        scores.append(psnr(c, denoised))
        chosen.append(f"{result.denoiser}({result.parameter_name}={result.parameter:.3g})")
    best = max(set(chosen), key=chosen.count)
    return {"psnr": round(float(np.mean(scores)), 3), "seconds": round(time.perf_counter() - start, 1),
            "most_chosen": best}


def main():
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--methods", default="n2s,n2v,n2v2,classic")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--checkpoints", default="1,2,5,10,20", help="minutes at which to evaluate")
    parser.add_argument("--checkpoint-images", type=int, default=0,
                        help="score only the first N test images at the checkpoints (0: all 68); the final score uses all")
    add_training_arguments(parser, batch=16, features=32)
    parser.add_argument("--tta", action="store_true", help="also report 8x test-time augmentation")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train, noisy, clean = load(args.data)
    results = {"benchmark": "B1 BSD68 sigma=25", "machine": machine(), "budget_minutes": args.minutes,
               "settings": {k: getattr(args, k) for k in ("batch", "patch", "lr", "lr_decay", "depth", "features", "seed")},
               "input_psnr": round(float(np.mean([psnr(c, n) for n, c in zip(noisy, clean)])), 3), "methods": {}}
    print(f"input PSNR {results['input_psnr']:.2f} dB", flush=True)
    for method in args.methods.split(","):
        print(f"{method} ...", flush=True)
        results["methods"][method] = (run_classic(noisy, clean) if method == "classic"
                                      else run_neural(method, args, train, noisy, clean))
        save(results, args.out, quiet=True)  # keep what is done if the run is cut off
    save(results, args.out)


if __name__ == "__main__":
    main()
