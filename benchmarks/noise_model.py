"""B3: noise-model recovery by N-net, on synthetic noise of known std and on real FMD noise.

Synthetic part: clean signals (a Volumes_Timelapse frame; FMD 50-frame averages with --signals), lightly smoothed so
their own residual noise is negligible, scaled to a known range; noise of known std curve sigma(s) is
added: Gaussian (sigma constant), Poisson-Gaussian (sigma^2 = a*s + b) and speckle (sigma = c*s). N-net
is trained on the noisy image alone; its predicted per-pixel std is compared with the true one. Metric:
the median over 10 signal bins (equal width, between the 5th and 95th percentile of the signal) of
|sigma_pred - sigma_true| / sigma_true. Bins follow the true clean signal ("true bins", the protocol) and,
as the front ends do, the denoised signal ("denoised bins"). The other methods' empirical curves (std of
noisy - denoised per bin of the denoised signal, ``core.noise.noise_curve``) are scored the same way.

Real part: on the FMD raw images, the held-out negative log-likelihood of N-net with a single Gaussian
(K = 1) against K = 2 and K = 3 mixtures: the last ``--holdout`` fraction of the rows is never trained
on; every pixel there is scored once, hidden by a spacing-4 grid (16 phases) and replaced by the mean of
its direct neighbours exactly as in training. NLL in nats per pixel, density per grey level (raw
units). Also the skewness of (noisy - denoised) per signal bin.

    python benchmarks/noise_model.py --threads 1 --out benchmarks/results/noise_model.json
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import tifffile
import torch
from _common import REPO, add_training_arguments, base_parser, machine, save
from scipy import ndimage as ndi
from skimage.io import imread

from napari_selfdenoise import Denoiser
from napari_selfdenoise.core.methods.nnet import direct_neighbour_mean, mixture_nll
from napari_selfdenoise.core.noise import noise_curve

# Known range of the clean signal (8-bit-like units) and the three noise families.
SIGNAL_RANGE = (20.0, 220.0)
NOISES = {
    "gaussian": {"sigma": 20.0},
    "poisson_gaussian": {"a": 2.0, "b": 16.0},
    "speckle": {"c": 0.1},
}
FMD = {"Confocal_FISH_3": "YX", "Confocal_BPAE_R_mito": "YX", "WideField_BPAE_RGB": "YXC"}


# ------------------------------------------------------------------------------------------- signals
def clean_signal(name: str, data, smooth: float) -> np.ndarray:
    if name == "ctc":  # first frame of the Cell Tracking Challenge time-lapse, 511 x 511 -> 508 x 508
        image = tifffile.imread(data / "Volumes_Timelapse" / "ctc_2D_timelapse_tyx_uint8.tif")[0, :508, :508]
    elif name == "cells3d":  # middle plane of the cells3d nuclei stack, 256 x 256
        image = tifffile.imread(data / "Volumes_Timelapse" / "cells3d_nuclei_zyx_uint16.tif")[30]
    elif name.startswith("fmd_"):  # FMD ground truth (50-frame average) of a gray sample
        stem = {"fmd_fish": "Confocal_FISH_3", "fmd_mito": "Confocal_BPAE_R_mito"}[name]
        image = imread(data / "FMD_samples" / f"{stem}_gt_avg50.png")
    else:
        raise SystemExit(f"unknown signal {name!r}: use ctc, cells3d, fmd_fish, fmd_mito")
    image = image.astype(np.float64)
    if smooth > 0:  # the "clean" sources keep some noise of their own; a light blur removes most of it
        image = ndi.gaussian_filter(image, smooth, mode="mirror")
    low, high = image.min(), image.max()
    return (SIGNAL_RANGE[0] + (image - low) / (high - low) * (SIGNAL_RANGE[1] - SIGNAL_RANGE[0])).astype(np.float32)


def true_sigma(kind: str, signal: np.ndarray) -> np.ndarray:
    p = NOISES[kind]
    if kind == "gaussian":
        return np.full(signal.shape, p["sigma"], np.float64)
    if kind == "poisson_gaussian":
        return np.sqrt(p["a"] * signal + p["b"])
    return p["c"] * signal.astype(np.float64)


def add_noise(kind: str, signal: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    s = signal.astype(np.float64)
    p = NOISES[kind]
    if kind == "gaussian":
        noisy = s + rng.normal(0, p["sigma"], s.shape)
    elif kind == "poisson_gaussian":  # a * Poisson(s / a): variance a * s; plus read noise of variance b
        noisy = p["a"] * rng.poisson(s / p["a"]) + rng.normal(0, math.sqrt(p["b"]), s.shape)
    else:
        noisy = s * (1 + p["c"] * rng.normal(0, 1, s.shape))
    return noisy.astype(np.float32)  # float, no clipping or rounding: the std curve stays exact


def relative_errors(estimate, truth) -> list[float]:
    return [abs(e - t) / t for e, t in zip(estimate, truth)]


def curve_score(noisy, binning_signal, estimate_map, sigma_map, bins):
    """Median relative error of the mean of ``estimate_map`` against the mean true sigma, per bin of
    ``binning_signal``; ``estimate_map`` None scores the empirical std of noisy - binning_signal."""
    curve = noise_curve(noisy, binning_signal, estimate_map, bins=bins)
    truth = noise_curve(noisy, binning_signal, sigma_map, bins=bins).predicted_std
    estimate = curve.std if estimate_map is None else curve.predicted_std
    errors = relative_errors(estimate, truth)
    return {"median_rel_error": round(float(np.median(errors)), 4), "max_rel_error": round(float(np.max(errors)), 4),
            "signal": [round(v, 2) for v in curve.signal], "sigma_true": [round(v, 3) for v in truth],
            "sigma_estimate": [round(v, 3) for v in estimate], "skewness": [round(v, 3) for v in curve.skewness]}


# ------------------------------------------------------------------------------------------- training
def train(method, image, axes, args, steps, mixture=None):
    options = {"mixture": mixture} if mixture is not None else {}
    if method == "nnet" and args.noise_lr is not None:
        options["noise_lr"] = args.noise_lr
    if method == "nnet" and args.structure is not None:
        options["structure"] = args.structure == "on"
    if method == "nnet" and args.calibrate is not None:
        options["calibrate"] = args.calibrate == "on"
    model = Denoiser(method, axes, steps=steps, time_limit=args.minutes * 60 if args.minutes else None,
                     batch=args.batch, patch=args.patch, lr=args.lr, lr_decay=args.lr_decay, depth=args.depth, features=args.features,
                     seed=args.seed, device=args.device, curve_every=0, method_options=options)
    wall, cpu = time.perf_counter(), time.process_time()
    model.fit(image)
    info = {"steps": model.state.step, "train_seconds": round(time.perf_counter() - wall, 1),
            "cpu_seconds": round(time.process_time() - cpu, 1)}
    return model, info


def run_synthetic(args, results):
    methods = [m for m in args.methods.split(",") if m]
    for signal_name in args.signals.split(","):
        clean = clean_signal(signal_name, args.data, args.smooth)
        for k, kind in enumerate(args.noises.split(",")):
            key = f"{signal_name}/{kind}"
            noisy = add_noise(kind, clean, args.seed + 1000 * k)
            sigma = true_sigma(kind, clean)
            sample_std = noise_curve(noisy, clean, sigma, bins=args.bins)  # the noise actually drawn
            entry = {"signal": signal_name, "noise": kind, "params": NOISES[kind], "shape": list(clean.shape),
                     "input_psnr": round(float(10 * np.log10(255**2 / np.mean((noisy - clean) ** 2))), 2),
                     "sampled_noise_rel_error": round(float(np.median(relative_errors(
                         sample_std.std, sample_std.predicted_std))), 4),
                     "methods": {}}
            print(f"{key}: input PSNR {entry['input_psnr']:.2f} dB", flush=True)
            # N-net on every signal; the other methods (empirical curves) on the first signal only.
            todo = ["nnet"] + [m for m in methods if m != "nnet" and signal_name == args.signals.split(",")[0]]
            for method in todo:
                if method == "classic":
                    from napari_selfdenoise.core.methods.classic import calibrate_and_denoise

                    wall = time.perf_counter()
                    denoised, chosen = calibrate_and_denoise(noisy, axes="YX")
                    info = {"train_seconds": round(time.perf_counter() - wall, 1),
                            "chosen": f"{chosen.denoiser}({chosen.parameter_name}={chosen.parameter:.3g})"}
                    outputs = {"denoised": denoised}
                else:
                    steps = args.steps if method == "nnet" else args.method_steps
                    model, info = train(method, noisy, "YX", args, steps)
                    outputs = model.predict_outputs(noisy)
                denoised = outputs["denoised"]
                info["psnr"] = round(float(10 * np.log10(255**2 / np.mean((denoised - clean) ** 2))), 2)
                info["empirical"] = curve_score(noisy, denoised, None, sigma, args.bins)
                if "noise_std" in outputs:
                    info["predicted_true_bins"] = curve_score(noisy, clean, outputs["noise_std"], sigma, args.bins)
                    info["predicted_denoised_bins"] = curve_score(noisy, denoised, outputs["noise_std"], sigma,
                                                                  args.bins)
                entry["methods"][method] = info
                line = f"  {method}: {info['psnr']:.2f} dB, empirical {info['empirical']['median_rel_error']:.1%}"
                if "predicted_true_bins" in info:
                    line += (f", predicted {info['predicted_true_bins']['median_rel_error']:.1%} (true bins) "
                             f"{info['predicted_denoised_bins']['median_rel_error']:.1%} (denoised bins)")
                print(line + f", {info.get('steps', '-')} steps, {info['train_seconds']} s", flush=True)
                results["synthetic"][key] = entry
                save(results, args.out, quiet=True)


# ------------------------------------------------------------------------------------------- real noise
def canonical(image, axes):
    return image[None, None] if axes == "YX" else np.moveaxis(image, -1, 0)[None]


def heldout_nll(model, image, axes, first_row, spacing=4, margin=32):
    """Mean NLL (nats per pixel) of rows >= ``first_row``, every pixel hidden once.

    Returns (density NLL, discrete NLL, pixels). The density is per grey level (raw units). The discrete
    NLL scores the probability mass the model gives the observed integer grey level, P(v - 0.5 < x < v + 0.5):
    the right score for 8-bit data, where a density can grow without bound on a spike of identical values
    (FMD raw images have 30-65 % of the held-out pixels at one or two offset values).

    A calibrated N-net (the default) describes the noise alone; the hidden pixel's predictive distribution
    is that noise widened by the blind-spot prediction's own error, estimated here as in the calibration
    (one bootstrap draw per phase, averaged per signal level). An uncalibrated head already includes it.
    """
    from napari_selfdenoise.core.methods.nnet import mean_by_level, sample_mixture

    x = canonical(image.astype(np.float32), axes)
    start = max(0, first_row - margin)
    x = model.normalization.apply(x[:, :, start:])
    rows = x.shape[2] // 4 * 4  # the U-Net pools twice
    x = torch.from_numpy(np.ascontiguousarray(x[:, :, :rows]))
    evaluated = torch.zeros(x.shape[2:], dtype=torch.bool)
    evaluated[first_row - start:] = True
    scale = torch.tensor(model.normalization.scale, dtype=torch.float64).reshape(1, -1, 1, 1, 1)
    net = model.network.eval()
    widen = bool(model.method.options.get("calibrate", False))
    gen = torch.Generator().manual_seed(7)
    parts = []  # per phase: (mask, signal, params, bootstrap error^2)
    with torch.no_grad():
        full, full_params = net(x)
        resampled_input = sample_mixture(full, full_params, gen)
        for py in range(spacing):
            for px in range(spacing):
                mask = torch.zeros(x.shape[2:], dtype=torch.bool)
                mask[py::spacing, px::spacing] = True
                mask = (mask & evaluated)[None]
                signal, params = net(torch.where(mask[:, None], direct_neighbour_mean(x), x))
                resampled, _ = net(torch.where(mask[:, None], direct_neighbour_mean(resampled_input),
                                               resampled_input))
                parts.append((mask, signal, params, (resampled - full) ** 2))
    # The error variance per channel and signal level, over the hidden pixels of all phases: (C, N).
    hidden_signal = torch.cat([s[0][:, m[0]] for m, s, _, _ in parts], dim=1)
    hidden_error = torch.cat([e[0][:, m[0]] for m, _, _, e in parts], dim=1)
    level_error = mean_by_level(hidden_error[None], hidden_signal[None])[0]
    density, discrete, count, offset = 0.0, 0.0, 0, 0
    for mask, signal, params, _ in parts:
        hidden = int(mask.sum())
        n = hidden * x.shape[1]
        weights, offsets, sigmas = (p.double() for p in params)
        if widen:
            extra = torch.zeros_like(signal[0], dtype=torch.float64)  # (C, Y, X)
            extra[:, mask[0]] = level_error[:, offset : offset + hidden].double()
            sigmas = torch.sqrt(sigmas**2 + extra[None, :, None])
        offset += hidden
        density += float(mixture_nll(x, signal, (weights, offsets, sigmas), mask)) * n
        centre = (x.double() - signal.double()).unsqueeze(2) - offsets  # (B, C, K, Y, X), normalised
        half = 0.5 / scale  # half a grey level in normalised units
        mass = (weights * (torch.special.ndtr((centre + half) / sigmas)
                           - torch.special.ndtr((centre - half) / sigmas))).sum(dim=2)
        nll = -torch.log(mass.clamp_min(1e-300))
        discrete += float(nll[mask[:, None].expand_as(nll)].sum())
        count += n
    log_scale = float(np.mean(np.log(model.normalization.scale)))  # density per normalised unit -> per grey level
    return density / count + log_scale, discrete / count, count


def run_real(args, results):
    mixtures = [int(k) for k in args.mixtures.split(",")]
    for name in args.real.split(","):
        axes = FMD[name]
        noisy = imread(args.data / "FMD_samples" / f"{name}_noisy_raw.png").astype(np.float32)
        first_row = round(noisy.shape[0] * (1 - args.holdout))
        entry = {"axes": axes, "trained_rows": first_row, "heldout_rows": noisy.shape[0] - first_row,
                 "mixtures": {}}
        print(f"{name}: train on rows < {first_row}, score rows >= {first_row}", flush=True)
        for k in mixtures:
            model, info = train("nnet", noisy[:first_row], axes, args, args.real_steps, mixture=k)
            density, discrete, info["heldout_values"] = heldout_nll(model, noisy, axes, first_row)
            info["heldout_nll_discrete"], info["heldout_nll_density"] = round(discrete, 4), round(density, 4)
            if k == mixtures[0]:  # skewness of the real noise against signal (denoised, whole image)
                denoised = model.predict(noisy)
                curve = noise_curve(noisy, denoised, bins=args.bins)
                entry["noise_curve"] = {"signal": [round(v, 2) for v in curve.signal],
                                        "std": [round(v, 3) for v in curve.std],
                                        "skewness": [round(v, 3) for v in curve.skewness],
                                        "from": f"nnet K={k}"}
            entry["mixtures"][f"K={k}"] = info
            print(f"  K={k}: held-out NLL {discrete:.4f} nats/pixel (grey-level mass; density {density:.4f}), "
                  f"{info['steps']} steps, "
                  f"{info['train_seconds']} s", flush=True)
            results["real"][name] = entry
            save(results, args.out, quiet=True)


# ------------------------------------------------------------------------------------------- plot
def plot(results, path):
    """True and N-net-predicted std against signal (true bins), plus every method's empirical curve."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot written (the curves are in the JSON)", flush=True)
        return None
    entries = [e for e in results["synthetic"].values() if "nnet" in e["methods"]]
    if not entries:
        return None
    fig, axs = plt.subplots(1, len(entries), figsize=(4.4 * len(entries), 3.6), squeeze=False)
    for ax, entry in zip(axs[0], entries):
        nnet = entry["methods"]["nnet"]["predicted_true_bins"]
        ax.plot(nnet["signal"], nnet["sigma_true"], "k-", lw=2, label="true")
        ax.plot(nnet["signal"], nnet["sigma_estimate"], "o-", label=f"N-net predicted ({nnet['median_rel_error']:.1%})")
        for method, info in entry["methods"].items():
            emp = info["empirical"]
            ax.plot(emp["signal"], emp["sigma_estimate"], ".:", alpha=0.7,
                    label=f"{method} empirical ({emp['median_rel_error']:.1%})")
        ax.set(title=f"{entry['signal']} / {entry['noise']}", xlabel="signal", ylabel="noise std")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=6)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main():
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--parts", default="synthetic,real")
    parser.add_argument("--signals", default="ctc", help="ctc, cells3d, fmd_fish, fmd_mito")
    parser.add_argument("--noises", default=",".join(NOISES))
    parser.add_argument("--smooth", type=float, default=1.0, help="Gaussian blur (px) of the clean signal")
    parser.add_argument("--methods", default="nnet,n2s,n2v,n2v2,n2same,classic",
                        help="methods whose empirical curve is scored (first signal only)")
    parser.add_argument("--steps", type=int, default=1500, help="N-net steps on synthetic noise")
    parser.add_argument("--method-steps", type=int, default=300, help="steps of the other methods")
    parser.add_argument("--minutes", type=float, default=None, help="wall-time cap per training")
    parser.add_argument("--noise-lr", type=float, default=None,
                        help="nnet option noise_lr (learning-rate factor of the noise head; default: the method's)")
    parser.add_argument("--calibrate", choices=("on", "off"), default=None,
                        help="N-net's noise calibration when training ends (default: the method's, on)")
    parser.add_argument("--structure", choices=("on", "off"), default=None,
                        help="N-net's blind-spot error term during training (default: the method's)")
    parser.add_argument("--real", default=",".join(FMD))
    parser.add_argument("--mixtures", default="1,2,3")
    parser.add_argument("--real-steps", type=int, default=600)
    parser.add_argument("--holdout", type=float, default=0.25, help="fraction of the rows held out (real part)")
    parser.add_argument("--bins", type=int, default=10)
    add_training_arguments(parser)
    parser.add_argument("--plot", type=str, default=str(REPO / "docs" / "noise_model_recovery.png"))
    parser.add_argument("--replot", type=Path, default=None, help="only redraw the plot from this JSON file")
    args = parser.parse_args()
    if args.replot is not None:
        print(plot(json.loads(args.replot.read_text()), Path(args.plot)))
        return
    torch.set_num_threads(args.threads)
    settings = ("signals", "noises", "smooth", "steps", "method_steps", "minutes", "noise_lr", "structure",
                "calibrate", "real", "real_steps",
                "holdout", "bins",
                "batch", "patch", "lr", "depth", "features", "seed")
    results = {"benchmark": "B3 noise-model recovery", "machine": machine(), "signal_range": SIGNAL_RANGE,
               "noises": NOISES, "settings": {k: getattr(args, k) for k in settings}, "synthetic": {}, "real": {}}
    parts = args.parts.split(",")
    if "synthetic" in parts:
        run_synthetic(args, results)
        if args.plot:
            written = plot(results, Path(args.plot))
            results["plot"] = str(written) if written else None
    if "real" in parts:
        run_real(args, results)
    save(results, args.out)


if __name__ == "__main__":
    main()
