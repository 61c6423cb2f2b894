"""Noise2Same (Xie, Wang & Ji, NeurIPS 2020), PSNR against sigma_loss.

Noise2Same minimises  mean((f(x) - x)**2) + lambda_inv * sqrt(mean_J((f(x) - f(x_J^c))**2))  with
lambda_inv = 2 * sigma_loss. Its Theorem 1 makes this an upper bound of the true (clean-target) loss when
sigma_loss is at least the noise std; a sigma_loss far below the noise std lets the network drift towards
the identity (the reconstruction term wins), and one far above over-smooths. The paper's figure: denoising
PSNR against sigma_loss for several noise levels, each best near sigma_loss ~ sigma_noise.

Units. The ``n2same`` method normalises its input with the image's mean and std (``meanstd``), so
sigma_loss lives in those units: a Gaussian noise std ``s`` on the [0, 1] signal is ``s / std(noisy)``
after normalisation (std(noisy) = sqrt(std(clean)**2 + s**2) grows with s, so the levels crowd together
below 1: that is why the method's default lambda_inv = 2, i.e. sigma_loss = 1, is always "large enough").
The x axis is sigma_loss in normalised units and the dotted vertical lines mark each level's noise std in
the same units, s / std(noisy) with the std the method's normalisation measured.

Setup: one synthetic fluorescence image (``fluorescence_image``, 160 px; 128 with --quick) per noise level,
self-supervised training on that noisy image alone, PSNR of the prediction against the clean image (peak
1). Every training uses the same seeds (network init, patches, masks), so curves differ only by
lambda_inv and the noise. A small U-Net (16 features, depth 2) and a fixed short step budget keep all
trainings within ~20 CPU minutes on one thread. Runs are deterministic for given seeds, but at such budgets
neighbouring sigma_loss values can differ by up to ~1 dB for reasons unrelated to sigma_loss (where the
short optimisation happens to land), so read the curves' shape, not single points.

    python benchmarks/figure_n2same_sigma.py                 # docs/n2same_sigma_loss.png, ~20 min
    python benchmarks/figure_n2same_sigma.py --quick         # ~5 min, a coarse preview
    python benchmarks/figure_n2same_sigma.py --from-json benchmarks/results/n2same_sigma_loss.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from napari_selfdenoise import Denoiser
from napari_selfdenoise.core.data.synthetic import add_noise, fluorescence_image, psnr

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "docs" / "n2same_sigma_loss.png"
DEFAULT_JSON = REPO / "benchmarks" / "results" / "n2same_sigma_loss.json"

LEVELS = (0.05, 0.1, 0.4)  # Gaussian noise std on the [0, 1] signal: ~0.3, 0.6, 0.95 in normalised units
SIGMA_LOSS = (0.15, 0.25, 0.35, 0.5, 0.7, 1.0, 2.0)
QUICK_SIGMA_LOSS = (0.15, 0.35, 0.6, 1.0)  # spans the three levels; 2.0 (over-smoothing) left out


def train_one(noisy: np.ndarray, sigma_loss: float, args):
    model = Denoiser("n2same", "YX", steps=args.steps, batch=args.batch, patch=args.patch, features=16, depth=2,
                     lr=args.lr, steps_per_epoch=args.steps_per_epoch, curve_every=0, seed=args.seed,
                     device="cpu", method_options={"lambda_inv": 2.0 * sigma_loss})
    model.fit(noisy)
    return model.predict(noisy), model.normalization


def compute(args) -> dict:
    clean = fluorescence_image((args.size, args.size), seed=args.seed)
    results = {"figure": "Noise2Same: PSNR against sigma_loss (lambda_inv = 2 sigma_loss)",
               "image": f"fluorescence_image(({args.size}, {args.size}), seed={args.seed})", "size": args.size,
               "training": {"network": "U-Net, 16 features, depth 2", "steps": args.steps, "batch": args.batch,
                            "patch": args.patch, "lr": args.lr, "steps_per_epoch": args.steps_per_epoch,
                            "seed": args.seed, "torch_threads": torch.get_num_threads(),
                            "normalization": "meanstd (the n2same default)"},
               "clean_std": float(clean.std()), "levels": []}
    for sigma_noise in args.levels:
        noisy = add_noise(clean, "gaussian", sigma=sigma_noise, seed=args.seed + 1)
        level = {"sigma_noise": sigma_noise, "noisy_psnr": psnr(clean, noisy, 1.0), "points": []}
        print(f"\nsigma_noise {sigma_noise}: noisy PSNR {level['noisy_psnr']:.2f} dB")
        for sigma_loss in args.sigma_loss:
            start = time.perf_counter()
            denoised, normalization = train_one(noisy, sigma_loss, args)
            seconds = time.perf_counter() - start
            value = psnr(clean, denoised, 1.0)
            level["points"].append({"sigma_loss": sigma_loss, "lambda_inv": 2 * sigma_loss, "psnr": value,
                                    "seconds": round(seconds, 1)})
            print(f"  sigma_loss {sigma_loss:5.2f} (lambda_inv {2 * sigma_loss:4.1f}): PSNR {value:6.2f} dB "
                  f"({seconds:.0f} s)", flush=True)
        # The noise std in the method's normalised units (its normalisation's scale = std of the noisy image).
        level["normalised_std"] = float(normalization.scale[0])
        level["sigma_noise_normalised"] = sigma_noise / level["normalised_std"]
        results["levels"].append(level)
    return results


def report(results: dict) -> None:
    print(f"\n{results['figure']}\n{results['image']}; training: {results['training']}")
    header = "sigma_loss " + "".join(f"  s={lv['sigma_noise']:<4} ({lv['sigma_noise_normalised']:.2f})"
                                     for lv in results["levels"])
    print(header + "\n" + "-" * len(header))
    grid = [p["sigma_loss"] for p in results["levels"][0]["points"]]
    for i, sigma_loss in enumerate(grid):
        row = "".join(f"  {lv['points'][i]['psnr']:>14.2f} dB" for lv in results["levels"])
        print(f"{sigma_loss:10.2f} {row}")
    print("noisy      " + "".join(f"  {lv['noisy_psnr']:>14.2f} dB" for lv in results["levels"]))
    for lv in results["levels"]:
        best = max(lv["points"], key=lambda p: p["psnr"])
        print(f"sigma_noise {lv['sigma_noise']} = {lv['sigma_noise_normalised']:.2f} normalised: best "
              f"sigma_loss {best['sigma_loss']} ({best['psnr']:.2f} dB)")


def plot(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8), constrained_layout=True)
    for k, lv in enumerate(results["levels"]):
        colour = f"C{k}"
        x = [p["sigma_loss"] for p in lv["points"]]
        y = [p["psnr"] for p in lv["points"]]
        ax.plot(x, y, "o-", color=colour, ms=4,
                label=rf"$\sigma_{{noise}}$ = {lv['sigma_noise']} ({lv['sigma_noise_normalised']:.2f} normalised)")
        best = int(np.argmax(y))
        ax.plot(x[best], y[best], "*", color=colour, ms=14, mec="k", mew=0.7, zorder=5)
        ax.axvline(lv["sigma_noise_normalised"], color=colour, ls=":", lw=1.5)
    ax.set_xscale("log")
    ticks = [p["sigma_loss"] for p in results["levels"][0]["points"]]
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel(r"$\sigma_{loss}$ in normalised (mean/std) units;  $\lambda_{inv} = 2\,\sigma_{loss}$")
    ax.set_ylabel("PSNR against the clean image (dB)")
    train = results["training"]
    size = results.get("size") or int(results["image"].split("((")[1].split(",")[0])
    ax.set_title("Noise2Same: PSNR against $\\sigma_{loss}$ (dotted: each $\\sigma_{noise}$ in normalised units,"
                 f" stars: best)\n{size}x{size} px synthetic fluorescence image, Gaussian noise;"
                 f" U-Net 16 features, depth 2, {train['steps']} steps of "
                 f"{train['batch']}x{train['patch']}$^2$", fontsize=9.5)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9, loc="lower right")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    print(f"\nwrote {out}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="PNG to write (default: %(default)s)")
    parser.add_argument("--json", type=Path, default=None,
                        help="raw numbers (default: benchmarks/results/n2same_sigma_loss[_quick].json)")
    parser.add_argument("--quick", action="store_true",
                        help=f"128 px, 150 steps, sigma_loss {QUICK_SIGMA_LOSS} (~5 CPU minutes)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--levels", type=float, nargs="+", default=list(LEVELS),
                        help="Gaussian noise stds on the [0, 1] signal (default: %(default)s)")
    parser.add_argument("--sigma-loss", type=float, nargs="+", default=None,
                        help=f"sigma_loss values, normalised units (default {SIGMA_LOSS})")
    parser.add_argument("--size", type=int, default=None, help="image edge (default 160; 128 with --quick)")
    parser.add_argument("--steps", type=int, default=None, help="training steps each (default 300; 150 with --quick)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--patch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--steps-per-epoch", type=int, default=50, help="validation interval (best weights kept)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--from-json", type=Path, default=None, help="only redraw the figure from saved numbers")
    args = parser.parse_args(argv)

    if args.from_json:
        results = json.loads(args.from_json.read_text())
    else:
        torch.set_num_threads(args.threads)
        args.size = args.size or (128 if args.quick else 160)
        args.steps = args.steps or (150 if args.quick else 300)
        args.sigma_loss = args.sigma_loss or list(QUICK_SIGMA_LOSS if args.quick else SIGMA_LOSS)
        start = time.perf_counter()
        results = compute(args)
        results["seconds"] = round(time.perf_counter() - start, 1)
        json_path = args.json or DEFAULT_JSON.with_stem(DEFAULT_JSON.stem + ("_quick" if args.quick else ""))
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(results, indent=2))
        print(f"\nraw numbers: {json_path} ({results['seconds'] / 60:.1f} min in all)")
    report(results)
    plot(results, args.out)


if __name__ == "__main__":
    main()
