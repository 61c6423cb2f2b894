"""Noise2Self (Batson & Royer, ICML 2019), the median vs donut-median figure.

Reproduces the paper's argument for J-invariance on a synthetic fluorescence image with known
clean image and additive Gaussian noise: for a median filter and a "donut" median filter (the
median of the disk neighbourhood without its centre pixel) of radius r, plot

    self-supervised loss  mean((f_r(x) - x)**2)       (needs only the noisy image x)
    true error            mean((f_r(x) - clean)**2)   (needs the clean image)

against r. The donut median is J-invariant (its output at a pixel never sees that pixel's noise),
so its self-supervised loss is the true error plus the noise variance and both are minimised at the
same radius. The plain median sees the centre pixel: its self-supervised loss is minimised by the
identity (radius 0, loss 0), whatever the true optimum is.

The filters are the ones ``classic`` calibrates (``core.methods.classic.denoise_classic`` with
``"median"`` / ``"donut_median"``); radius 0 of the median is the identity. Losses are in the
image's units ([0, 1] signal), per pixel.

    python benchmarks/figure_n2s_donut.py                      # docs/n2s_median_vs_donut.png
    python benchmarks/figure_n2s_donut.py --quick              # smaller image, fewer radii
    python benchmarks/figure_n2s_donut.py --from-json benchmarks/results/n2s_median_vs_donut.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from napari_selfdenoise.core.data.synthetic import add_noise, fluorescence_image
from napari_selfdenoise.core.methods.classic import denoise_classic

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "docs" / "n2s_median_vs_donut.png"
DEFAULT_JSON = REPO / "benchmarks" / "results" / "n2s_median_vs_donut.json"


def filtered(noisy: np.ndarray, kind: str, radius: int) -> np.ndarray:
    if radius == 0:  # a median over the centre pixel alone: the identity
        return noisy.copy()
    return denoise_classic(noisy, "YX", kind, radius)


def compute(size: int, sigma: float, radii: list[int], seed: int) -> dict:
    clean = fluorescence_image((size, size), seed=seed)
    noisy = add_noise(clean, "gaussian", sigma=sigma, seed=seed + 1)
    curves = {}
    for kind in ("median", "donut_median"):
        rows = []
        for r in radii:
            if kind == "donut_median" and r == 0:
                continue  # an empty neighbourhood: undefined
            out = filtered(noisy, kind, r).astype(np.float64)
            rows.append({"radius": r,
                         "self_supervised": float(np.mean((out - noisy) ** 2)),
                         "true": float(np.mean((out - clean) ** 2))})
        curves[kind] = rows
    return {"figure": "Noise2Self: median vs donut median", "image": f"fluorescence_image(({size}, {size}), "
            f"seed={seed})", "noise": f"Gaussian noise, sigma={sigma}", "noise_variance": sigma**2,
            "measured_noise_variance": float(np.mean((noisy.astype(np.float64) - clean) ** 2)),
            "curves": curves}


def report(results: dict) -> None:
    print(f"{results['image']}, {results['noise']} (noise variance {results['noise_variance']:.5f})")
    for kind, rows in results["curves"].items():
        print(f"\n{kind}:  radius  self-supervised  true error")
        for row in rows:
            print(f"{'':{len(kind) + 2}}{row['radius']:6d}  {row['self_supervised']:15.5f}  {row['true']:10.5f}")
        ss = min(rows, key=lambda r: r["self_supervised"])["radius"]
        true = min(rows, key=lambda r: r["true"])["radius"]
        print(f"  argmin self-supervised: r={ss}; argmin true error: r={true}")


def plot(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    titles = {"median": "Median filter (not J-invariant)", "donut_median": "Donut median (J-invariant)"}
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharey=True, constrained_layout=True)
    for ax, (kind, rows) in zip(axes, results["curves"].items()):
        radius = [r["radius"] for r in rows]
        for key, label, colour in (("self_supervised", r"self-supervised loss $\|f(x) - x\|^2$", "C0"),
                                   ("true", r"true error $\|f(x) - x_{clean}\|^2$", "C3")):
            values = [r[key] for r in rows]
            ax.plot(radius, values, "o-", color=colour, label=label, ms=4)
            best = int(np.argmin(values))
            ax.plot(radius[best], values[best], "*", color=colour, ms=17, mec="k", mew=0.7, zorder=5,
                    clip_on=False)
            ax.annotate(f"min r={radius[best]}", (radius[best], values[best]), textcoords="offset points",
                        xytext=(8, -14 if key == "true" else 8), color=colour, fontsize=9)
        ax.axhline(results["noise_variance"], color="0.5", ls=":", lw=1)
        ax.text(radius[-1], results["noise_variance"], r"noise variance $\sigma^2$", color="0.4", fontsize=8,
                ha="right", va="bottom")
        ax.set_title(titles[kind])
        ax.set_xlabel("filter radius (pixels)")
        ax.set_xticks(radius)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mean squared error per pixel")
    axes[0].set_ylim(bottom=0)
    axes[0].legend(loc="center right", fontsize=9)
    fig.suptitle(f"Noise2Self: calibrating a median filter without clean data "
                 f"({results['noise']} on a [0, 1] signal; stars = minima)", fontsize=11)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    print(f"\nwrote {out}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="PNG to write (default: %(default)s)")
    parser.add_argument("--json", type=Path, default=None,
                        help="raw numbers (default: benchmarks/results/n2s_median_vs_donut[_quick].json)")
    parser.add_argument("--quick", action="store_true", help="128 px image and radii 0-5 (a few seconds)")
    parser.add_argument("--size", type=int, default=None, help="image edge in pixels (default 256; 128 with --quick)")
    parser.add_argument("--sigma", type=float, default=0.15, help="Gaussian noise std on the [0, 1] signal")
    parser.add_argument("--max-radius", type=int, default=None, help="largest radius (default 8; 5 with --quick)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--from-json", type=Path, default=None, help="only redraw the figure from saved numbers")
    args = parser.parse_args(argv)

    if args.from_json:
        results = json.loads(args.from_json.read_text())
    else:
        size = args.size or (128 if args.quick else 256)
        max_radius = args.max_radius if args.max_radius is not None else (5 if args.quick else 8)
        start = time.perf_counter()
        results = compute(size, args.sigma, list(range(max_radius + 1)), args.seed)
        results["seconds"] = round(time.perf_counter() - start, 1)
        json_path = args.json or DEFAULT_JSON.with_stem(DEFAULT_JSON.stem + ("_quick" if args.quick else ""))
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(results, indent=2))
        print(f"raw numbers: {json_path}")
    report(results)
    plot(results, args.out)


if __name__ == "__main__":
    main()
