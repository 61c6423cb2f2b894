"""B2 reference: how far a *supervised* U-Net gets on each FMD sample, to read the self-supervised figures by.

The same kind of U-Net is trained noisy -> 50-frame average on the left half of the image (the only clean
data there is) and scored on the right half; the self-supervised method is trained on the whole noisy image,
as in ``fmd.py``, and scored on the same right half. A supervised network trained on ground truth of the
same microscope is a practical ceiling for single-image self-supervision: if it cannot gain 8 dB, no blind-
spot method trained on the noisy image alone will.

    python benchmarks/fmd_supervised.py --threads 1 --out benchmarks/results/fmd_supervised.json
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from _common import add_training_arguments, base_parser, machine, psnr, save
from fmd import SAMPLES, load, train_and_predict

from napari_selfdenoise.core.data.checks import check_image
from napari_selfdenoise.core.nn.networks import UNet


def channels_first(image: np.ndarray, axes: str) -> np.ndarray:
    return check_image(image, axes).to_canonical(image)[0]  # (C, Y, X): the one sample


def augmented_pairs(noisy, clean, rng, batch: int, patch: int):
    """``batch`` random patches of the (C, Y, X) pair, each rotated by a multiple of 90 degrees and maybe flipped."""
    inputs, targets = [], []
    for _ in range(batch):
        y, x = (int(rng.integers(0, size - patch + 1)) for size in noisy.shape[1:])
        pair = [a[:, y:y + patch, x:x + patch] for a in (noisy, clean)]
        turns, flip = int(rng.integers(4)), rng.random() < 0.5
        pair = [np.rot90(a, turns, axes=(1, 2)) for a in pair]
        if flip:
            pair = [a[:, :, ::-1] for a in pair]
        inputs.append(pair[0])
        targets.append(pair[1])
    return (torch.from_numpy(np.ascontiguousarray(np.stack(a))) for a in (inputs, targets))


def train_supervised(noisy, clean, axes, args) -> dict:
    """Train on the left half, score on the right half every ``eval_every`` steps (final and best)."""
    x_noisy, x_clean = channels_first(noisy, axes), channels_first(clean, axes)
    half = x_noisy.shape[-1] // 2
    mean, std = x_noisy.mean(), x_noisy.std()
    norm_noisy, norm_clean = (x_noisy - mean) / std, (x_clean - mean) / std
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    channels = x_noisy.shape[0]
    net = UNet(channels, channels, 2, depth=args.depth, features=args.features)
    optimizer = torch.optim.Adam(net.parameters(), args.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.steps)
    test_input = torch.from_numpy(np.ascontiguousarray(norm_noisy[None, :, :, half:]))

    def score() -> float:
        with torch.no_grad():
            out = net(test_input)[0].numpy() * std + mean
        return round(psnr(x_clean[:, :, half:], out), 3)

    curve, start = [], time.perf_counter()
    for step in range(1, args.steps + 1):
        inputs, targets = augmented_pairs(norm_noisy[:, :, :half], norm_clean[:, :, :half], rng, args.batch, args.patch)
        loss = torch.mean((net(inputs) - targets) ** 2)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % args.eval_every == 0 or step == args.steps:
            curve.append([step, score()])
            print(f"    supervised step {step}: {curve[-1][1]:.2f} dB on the right half", flush=True)
    return {"psnr": curve[-1][1], "best_psnr": max(p for _, p in curve), "curve": curve,
            "train_seconds": round(time.perf_counter() - start, 1)}


def main():
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--samples", default=",".join(SAMPLES))
    parser.add_argument("--method", default="n2s", help="the self-supervised method to compare (fmd.py syntax)")
    parser.add_argument("--steps", type=int, default=1500, help="supervised steps")
    parser.add_argument("--self-steps", type=int, default=600, help="self-supervised steps (fmd.py's default)")
    parser.add_argument("--eval-every", type=int, default=250)
    add_training_arguments(parser, features=32)
    parser.set_defaults(depth=3, lr=1e-3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    settings = ("steps", "self_steps", "batch", "patch", "lr", "depth", "features", "seed", "method")
    results = {"benchmark": "B2 supervised reference (left half -> right half)", "machine": machine(),
               "settings": {k: getattr(args, k) for k in settings}, "samples": {}}
    for name in args.samples.split(","):
        axes = SAMPLES[name]
        noisy, clean = load(args.data, name)
        right = (slice(None), slice(noisy.shape[1] // 2, None))
        entry = {"input": round(psnr(clean[right], noisy[right]), 3)}
        print(f"{name}: input {entry['input']:.2f} dB on the right half", flush=True)
        entry["supervised"] = train_supervised(noisy, clean, axes, args)
        # fmd.py's settings for the self-supervised method
        self_args = argparse.Namespace(**{**vars(args), "steps": args.self_steps, "minutes": None, "depth": 2,
                                          "features": 16, "lr": 4e-4})
        denoised, _, _ = train_and_predict(args.method, self_args, noisy, axes)
        entry["self_supervised"] = {"method": args.method, "psnr": round(psnr(clean[right], denoised[right]), 3)}
        print(f"  supervised {entry['supervised']['psnr']:.2f} (best {entry['supervised']['best_psnr']:.2f}), "
              f"{args.method} {entry['self_supervised']['psnr']:.2f} dB on the right half", flush=True)
        results["samples"][name] = entry
        save(results, args.out, quiet=True)
    save(results, args.out)


if __name__ == "__main__":
    main()
