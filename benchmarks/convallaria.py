"""Real microscopy noise: N-net on the Convallaria frame (PN2V's data), its noise curve and a before/after crop.

There is no ground truth for this single frame (PROVENANCE.md), so the figure checks N-net's predicted noise
std against two estimates made without it: the std of (noisy - denoised) per signal level (an upper bound: it
holds the denoiser's own error too), and the noise of the same camera measured on the defocused calibration
frame that PN2V made for this (a smooth image: each pixel minus the mean of its 8 neighbours, robust std,
binned by the local mean; the same EM gain, so the same noise for the same signal; it knows nothing of N-net).
A Poisson-Gaussian line, variance = gain * signal + offset, is fitted to N-net's prediction: how noisy the
microscope is, as a function of signal.

    python benchmarks/convallaria.py --minutes 8 --figure docs/convallaria.png --out /tmp/convallaria.json

The data is CC-BY-4.0 (Krull et al. 2020, Zenodo 5156913); the figure credits it.
"""

from __future__ import annotations

import itertools
import time

import numpy as np
import tifffile
import torch
from _common import REPO, base_parser, machine, save
from scipy import ndimage as ndi

from napari_selfdenoise import Denoiser
from napari_selfdenoise.core.noise import noise_curve

FRAME = "Convallaria_PN2V_frames/Convallaria_frame0000_noisy_uint16.tif"
DEFOCUSED = "Convallaria_PN2V_frames/Convallaria_FD_defocused_frame0000_uint16.tif"
CREDIT = "Convallaria majalis, spinning-disk confocal (Krull et al. 2020, PN2V; CC-BY-4.0)"


def calibration_noise(defocused: np.ndarray, edges: np.ndarray) -> list[float]:
    """Per signal bin (of the 7x7 local mean): the robust std of each pixel minus the mean of its 8
    neighbours, scaled to the pixel's own noise std (that difference has variance (1 + 1/8) sigma^2)."""
    x = defocused.astype(np.float64)
    ring = np.full((3, 3), 1 / 8)
    ring[1, 1] = 0
    residual = x - ndi.convolve(x, ring, mode="reflect")
    local = ndi.uniform_filter(x, 7)
    out = []
    for low, high in itertools.pairwise(edges):
        r = residual[(local >= low) & (local < high)]
        if r.size < 200:
            out.append(float("nan"))
            continue
        out.append(float(1.4826 * np.median(np.abs(r - np.median(r))) / np.sqrt(1 + 1 / 8)))
    return out


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=8.0, help="N-net's training time limit")
    parser.add_argument("--figure", type=lambda p: REPO / p if not p.startswith("/") else p, default=None)
    parser.add_argument("--crop", type=int, nargs=3, default=(300, 380, 256), metavar=("Y", "X", "SIZE"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    noisy = tifffile.imread(args.data / FRAME).astype(np.float32)
    started = time.perf_counter()
    model = Denoiser("nnet", "YX", time_limit=args.minutes * 60, device=args.device, seed=0).fit(noisy)
    trained = time.perf_counter() - started
    out = model.predict_outputs(noisy)
    denoised, std = out["denoised"], out["noise_std"]
    curve = noise_curve(noisy, denoised, std, bins=12, percentiles=(1, 99))
    edges = np.linspace(*np.percentile(denoised, (1, 99)), 13)
    reference = calibration_noise(tifffile.imread(args.data / DEFOCUSED), edges)
    signal, predicted = np.array(curve.signal), np.array(curve.predicted_std)
    gain, offset = np.polyfit(signal, predicted**2, 1)
    results = {
        "machine": machine(), "frame": FRAME, "train_seconds": round(trained, 1), "steps": model.state.step,
        "signal": curve.signal, "nnet_predicted_std": curve.predicted_std, "residual_std": curve.std,
        "calibration_frame_std": reference, "bin_edges": edges.tolist(),
        "poisson_gaussian": {"gain": float(gain), "offset": float(offset)},
        # Bins the calibration frame fills (NaN elsewhere); N-net's bins are the same edges, but an empty one
        # is left out of its curve, so the ratio is taken where both exist, on the bins' centres.
        "predicted_vs_calibration_median_ratio": _median_ratio(curve, edges, reference),
    }
    print(f"{model.state.step} steps in {trained:.0f} s; variance = {gain:.2f} * signal + {offset:.0f}; "
          f"predicted / calibration frame: {results['predicted_vs_calibration_median_ratio']:.3f}", flush=True)
    save(results, args.out, quiet=True)
    if args.figure:
        figure(noisy, denoised, results, args.crop, args.figure)


def _median_ratio(curve, edges, reference) -> float:
    centres = (edges[:-1] + edges[1:]) / 2
    at_signal = np.interp(curve.signal, centres, reference)
    return float(np.nanmedian(np.array(curve.predicted_std) / at_signal))


def figure(noisy, denoised, results, crop, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    y, x, size = crop
    window = (slice(y, y + size), slice(x, x + size))
    low, high = np.percentile(noisy[window], (0.5, 99.5))
    fig, axs = plt.subplots(1, 3, figsize=(12.6, 4.3), gridspec_kw={"width_ratios": [1, 1, 1.25]})
    for ax, image, title in ((axs[0], noisy, "noisy (one frame)"), (axs[1], denoised, "N-net denoised")):
        ax.imshow(image[window], cmap="gray", vmin=low, vmax=high, interpolation="nearest")
        ax.set_title(f"{title}, {size}x{size} crop", fontsize=10)
        ax.axis("off")
    ax = axs[2]
    signal = np.array(results["signal"])
    centres = (np.array(results["bin_edges"][:-1]) + np.array(results["bin_edges"][1:])) / 2
    pg = results["poisson_gaussian"]
    grid = np.linspace(signal.min(), signal.max(), 100)
    ax.plot(signal, results["nnet_predicted_std"], "o-", label="N-net predicted std")
    ax.plot(grid, np.sqrt(np.clip(pg["gain"] * grid + pg["offset"], 0, None)), "k:",
            label=f"fit: var = {pg['gain']:.1f} x signal {pg['offset']:+.0f}")
    ax.plot(centres, results["calibration_frame_std"], "s--", label="defocused calibration frame (no model)")
    ax.plot(signal, results["residual_std"], ".-", alpha=0.6, label="std(noisy - denoised)")
    ax.set(xlabel="signal (grey levels)", ylabel="noise std (grey levels)",
           title=f"noise against signal ({results['steps']} steps, {results['train_seconds'] / 60:.0f} CPU min)")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8, loc="lower right")
    fig.text(0.01, 0.01, CREDIT, fontsize=7, color="0.4")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"figure: {path}", flush=True)


if __name__ == "__main__":
    main()
