"""Issue 15, part 3: how close is auto's quality estimate (score minus noise variance) to the truth?

Part A (no training, many images): on the held-out crops auto scores (the validation slab), the J-invariant
predictions of the calibrated classical filter and of Gaussian filters; estimate = the masked-pixel loss minus
the data's noise-variance estimate; truth = the MSE of the same predictions against the clean image.
Part B (``--auto-steps N``): full auto races on a few images; estimate against the truth of the held-out
J-invariant prediction and of the result the model actually outputs (plain inference, whole image).

The error in dB is 10 log10(estimated MSE / true MSE): independent of the PSNR peak. FMD's "ground truth"
is the mean of 50 frames, itself noisy by sigma^2 / 50: its true MSEs are corrected by that (estimated).

    python benchmarks/auto_estimate.py --bsd 10 --auto-steps 300 --out benchmarks/results/auto_estimate.json
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from _common import base_parser, machine, save
from skimage.io import imread

from napari_selfdenoise import Denoiser
from napari_selfdenoise.core.config import TrainConfig
from napari_selfdenoise.core.data.normalize import Normalization
from napari_selfdenoise.core.data.synthetic import add_noise, fluorescence_image
from napari_selfdenoise.core.methods.classic import CalibrationResult, calibrate
from napari_selfdenoise.core.training.quality import noise_variance_from_data, quality_estimate, shared_noise_of
from napari_selfdenoise.core.training.scoring import HeldOut, classic_crop, classic_predictor


def images(args):
    """(name, noisy, clean, axes, ground-truth frames averaged or None)."""
    clean = fluorescence_image((256, 256), seed=11)
    yield "synthetic gaussian 0.1", add_noise(clean, "gaussian", sigma=0.1, seed=12), clean, None
    yield "synthetic poisson-gaussian", add_noise(clean, "poisson_gaussian", photons=30, sigma=0.03, seed=13), \
        clean, None
    test = np.load(args.data / "BSD68" / "bsd68_gaussian25_seed68025_int16.npz")
    for key in sorted(test.files)[: args.bsd]:
        yield f"BSD68 {key} sigma 25", test[key].astype(np.float32), \
            imread(args.data / "BSD68" / "clean" / f"{key}.png").astype(np.float32), None
    for name in ("Confocal_FISH_3", "Confocal_BPAE_R_mito", "WideField_BPAE_RGB"):
        noisy = imread(args.data / "FMD_samples" / f"{name}_noisy_raw.png").astype(np.float32)
        clean = imread(args.data / "FMD_samples" / f"{name}_gt_avg50.png").astype(np.float32)
        if noisy.ndim == 3:  # the wide-field RGB composite: its first channel
            noisy, clean = noisy[..., 0], clean[..., 0]
        yield f"FMD {name}", noisy, clean, 50


def held_pair(noisy, clean):
    """auto's held-out crops of the noisy image and the same crops of the clean one."""
    config = TrainConfig(axes="YX")
    held = HeldOut.from_sources([noisy[None, None]], config, (4, 4))
    truth = HeldOut.from_sources([clean[None, None]], config, (4, 4))
    return held, truth.crops


def true_mse(evaluation, clean_crops, gt_variance: float) -> float:
    mse = float(np.mean(np.concatenate([((p - c[0]) ** 2).ravel()
                                        for p, c in zip(evaluation.predictions, clean_crops)])))
    return mse - gt_variance


def row(name, predictor, evaluation, estimate, truth) -> dict:
    db = 10 * math.log10(estimate.mse / truth) if estimate.mse and estimate.mse > 0 and truth > 0 else None
    low = estimate.psnr_low if estimate.reliable else None
    true_psnr = 10 * math.log10(estimate.peak**2 / truth) if truth > 0 else None
    inside = bool(estimate.reliable and low <= true_psnr <= estimate.psnr_high) if true_psnr else None
    return {"image": name, "predictor": predictor, "score": evaluation.score,
            "noise_variance": estimate.noise_variance, "estimated_mse": estimate.mse, "true_mse": truth,
            "reliable": estimate.reliable, "reason": estimate.reason, "psnr_estimate": estimate.psnr,
            "psnr_interval": [estimate.psnr_low, estimate.psnr_high], "psnr_true": true_psnr,
            "error_db": db, "truth_inside_interval": inside}


def part_a(args) -> list[dict]:
    rows = []
    for name, noisy, clean, frames in images(args):
        start = time.perf_counter()
        held, clean_crops = held_pair(noisy, clean)
        variance, _ = noise_variance_from_data(held.crops)
        gt_variance = variance / frames if frames else 0.0
        shared = shared_noise_of([noisy[None, None]])
        crop = classic_crop(noisy[None, None])
        calibration = calibrate(crop, "SCYX")
        norm = Normalization.fit(crop)
        predictors = {f"classic {calibration.denoiser} {calibration.parameter:g}": classic_predictor(calibration, norm)}
        for sigma in (1.0, 2.0):
            predictors[f"gaussian {sigma:g}"] = classic_predictor(CalibrationResult("gaussian", "sigma", sigma), norm)
        for label, predictor in predictors.items():
            evaluation = held.evaluate(predictor)
            variance, stderr, mse_stderr = noise_variance_from_data(held.crops, errors=evaluation.errors)
            estimate = quality_estimate(evaluation, variance, stderr, "data", shared, mse_stderr)
            rows.append(row(name, label, evaluation, estimate, true_mse(evaluation, clean_crops, gt_variance)))
            r = rows[-1]
            print(f"{name:32s} {label:28s} est {r['estimated_mse']:.4g} true {r['true_mse']:.4g} "
                  f"err {r['error_db'] if r['error_db'] is None else round(r['error_db'], 2)} dB "
                  f"inside {r['truth_inside_interval']} reliable {r['reliable']} "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
    return rows


def part_b(args) -> list[dict]:
    rows = []
    chosen = [i for i in images(args) if i[0] in args.auto_images]
    for name, noisy, clean, frames in chosen:
        start = time.perf_counter()
        model = Denoiser("auto", "YX", steps=args.auto_steps, batch=args.batch, features=args.features,
                         patch=64, curve_every=0, seed=0).fit(noisy)
        seconds = time.perf_counter() - start
        result = model.auto
        estimate = result.estimate
        _, clean_crops = held_pair(noisy, clean)
        gt_variance = estimate.noise_variance / frames if frames else 0.0
        output = model.predict(noisy)
        peak = estimate.peak
        # the result the model outputs, on the held-out crops (same place as the scored pixels) and everywhere
        crops_out = HeldOut.from_sources([output[None, None]], TrainConfig(axes="YX"), (4, 4)).crops
        out_mse = float(np.mean(np.concatenate([((o - c) ** 2).ravel() for o, c in zip(crops_out, clean_crops)])))
        out_mse -= gt_variance
        full_mse = float(np.mean((output - clean) ** 2)) - gt_variance
        winner = next(s for s in result.scores if s.method == result.winner)
        invariant_mse = winner.score - estimate.noise_variance  # the estimate's own target is below
        entry = {"image": name, "steps": args.auto_steps, "seconds": round(seconds, 1), "winner": result.winner,
                 "table": [s.to_dict() for s in result.scores], "estimate": estimate.to_dict(),
                 "estimate_text": estimate.text(),
                 "psnr_true_output_heldout": 10 * math.log10(peak**2 / out_mse),
                 "psnr_true_output_image_peak255": 10 * math.log10(255.0**2 / full_mse) if not name.startswith("synthetic")
                 else 10 * math.log10(1.0 / full_mse),
                 "error_db_vs_output": 10 * math.log10(estimate.mse / out_mse) if estimate.mse > 0 else None,
                 "estimated_invariant_mse": invariant_mse}
        rows.append(entry)
        print(name, result.table(), estimate.text(), f"true output PSNR on held-out {entry['psnr_true_output_heldout']:.2f}",
              f"err vs output {entry['error_db_vs_output']}", f"{seconds:.0f} s", sep="\n", flush=True)
    return rows


def main():
    parser = base_parser(__doc__)
    parser.add_argument("--bsd", type=int, default=10, help="BSD68 images in part A")
    parser.add_argument("--auto-steps", type=int, default=0, help="part B: auto races with this step budget")
    parser.add_argument("--auto-images", default="synthetic gaussian 0.1,FMD Confocal_FISH_3",
                        help="part B: comma-separated image names")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--features", type=int, default=16)
    parser.add_argument("--skip-a", action="store_true")
    args = parser.parse_args()
    args.auto_images = [n.strip() for n in args.auto_images.split(",")]
    torch.set_num_threads(args.threads)
    results = {"machine": machine()}
    if not args.skip_a:
        results["estimator"] = part_a(args)
    if args.auto_steps:
        results["auto"] = part_b(args)
    save(results, args.out, quiet=True)


if __name__ == "__main__":
    main()
