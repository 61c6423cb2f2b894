"""B2: real fluorescence noise, single image (FMD samples; see ../shared/BENCHMARKS.md).

Each noisy raw FMD image (Confocal FISH, Confocal BPAE mitochondria, wide-field BPAE RGB) is denoised by
training on itself only, and compared with its 50-frame average: plain PSNR (peak 255, no clipping) and
PSNR after an affine least-squares fit of the prediction to the ground truth (CARE protocol; one fit per
image, all channels together). The classic baseline is ``calibrate_and_denoise`` on the same image.

    python benchmarks/fmd.py --threads 1 --out benchmarks/results/fmd.json
"""

from __future__ import annotations

import time

import numpy as np
import torch
from _common import add_training_arguments, auto_summary, base_parser, machine, psnr, psnr_affine, save
from skimage.io import imread

from napari_selfdenoise import Denoiser

SAMPLES = {"Confocal_FISH_3": "YX", "Confocal_BPAE_R_mito": "YX", "WideField_BPAE_RGB": "YXC"}


def load(data, name):
    noisy = imread(data / "FMD_samples" / f"{name}_noisy_raw.png").astype(np.float32)
    clean = imread(data / "FMD_samples" / f"{name}_gt_avg50.png").astype(np.float32)
    return noisy, clean


def scores(clean, image) -> dict:
    # The right half: where fmd_supervised.py scores its supervised reference (trained on the left half).
    half = clean.shape[1] // 2
    return {"psnr": round(psnr(clean, image), 3), "psnr_affine": round(psnr_affine(clean, image), 3),
            "psnr_right_half": round(psnr(clean[:, half:], image[:, half:]), 3)}


def method_and_options(spec: str):
    """``n2s`` or ``n2s:blind_radius=2:grid=6``: a method and its options (values as the CLI reads them)."""
    from napari_selfdenoise.cli.common import parse_options

    method, *pairs = spec.split(":")
    return method, parse_options(pairs)


def train_and_predict(spec, args, noisy, axes):
    """Train ``spec`` on the noisy image and predict it: (denoised, timings, model)."""
    method, options = method_and_options(spec)
    model = Denoiser(method, axes, method_options=options, steps=args.steps, time_limit=args.minutes * 60 if args.minutes else None,
                     batch=args.batch, patch=args.patch, lr=args.lr, lr_decay=args.lr_decay, depth=args.depth, features=args.features,
                     seed=args.seed, device=args.device, curve_every=0)
    wall, cpu = time.perf_counter(), time.process_time()
    model.fit(noisy)
    train_seconds, cpu_seconds = time.perf_counter() - wall, time.process_time() - cpu
    start = time.perf_counter()
    denoised = model.predict(noisy)
    return denoised, {"steps": model.state.step, "train_seconds": round(train_seconds, 1),
                      "seconds_per_step": round(train_seconds / model.state.step, 4),
                      # Share of the threads this process really got: other load on the machine shows here.
                      "cpu_share": round(cpu_seconds / (train_seconds * torch.get_num_threads()), 2),
                      "predict_seconds": round(time.perf_counter() - start, 2), **auto_summary(model)}, model


def inference_variants(model, noisy, clean) -> dict:
    """The right-half PSNR of the same model with 8x TTA and, for N-net, with its posterior (without and
    with TTA)."""
    out = {"tta": scores(clean, model.predict(noisy, tta=True))["psnr_right_half"]}
    if model.method is not None and "posterior" in model.method.options:
        default = model.method.options["posterior"]
        model.method.options["posterior"] = True
        for name, tta in (("posterior", False), ("posterior_tta", True)):
            out[name] = scores(clean, model.predict(noisy, tta=tta))["psnr_right_half"]
        model.method.options["posterior"] = default
    return out


def run_neural(spec, args, noisy, clean, axes):
    denoised, timings, model = train_and_predict(spec, args, noisy, axes)
    if args.variants:
        timings["variants"] = inference_variants(model, noisy, clean)
        print(f"    {spec}, other inferences (right half): {timings['variants']}", flush=True)
    return {**scores(clean, denoised), **timings}


def run_classic(spec, noisy, clean, axes):
    from napari_selfdenoise.core.methods.classic import calibrate_and_denoise

    _, options = method_and_options(spec)  # classic:blind_radius=2
    start = time.perf_counter()
    denoised, chosen = calibrate_and_denoise(noisy, axes=axes, **options)
    result = scores(clean, denoised)
    result.update({"seconds": round(time.perf_counter() - start, 1),
                   "chosen": f"{chosen.denoiser}({chosen.parameter_name}={chosen.parameter:.3g})"})
    return result


def main():
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--samples", default=",".join(SAMPLES))
    parser.add_argument("--methods", default="n2s,n2v,n2v2,n2same,nnet,classic",
                        help="comma-separated; options after colons, e.g. n2s:blind_radius=2")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--minutes", type=float, default=None, help="wall-time cap per method and image")
    parser.add_argument("--variants", action="store_true",
                        help="also score each model with 8x TTA and (N-net) its posterior, right half")
    add_training_arguments(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    settings = ("steps", "minutes", "batch", "patch", "lr", "lr_decay", "depth", "features", "seed")
    results = {"benchmark": "B2 FMD single image", "machine": machine(),
               "settings": {k: getattr(args, k) for k in settings}, "samples": {}}
    for name in args.samples.split(","):
        axes = SAMPLES[name]
        noisy, clean = load(args.data, name)
        entry = {"axes": axes, "shape": list(noisy.shape), "input": scores(clean, noisy), "methods": {}}
        results["samples"][name] = entry
        print(f"{name}: input {entry['input']['psnr']:.2f} dB ({entry['input']['psnr_affine']:.2f} affine)",
              flush=True)
        for method in args.methods.split(","):
            entry["methods"][method] = (run_classic(method, noisy, clean, axes) if method.startswith("classic")
                                        else run_neural(method, args, noisy, clean, axes))
            r = entry["methods"][method]
            print(f"  {method}: {r['psnr']:.2f} dB ({r['psnr_affine']:.2f} affine, right half {r['psnr_right_half']:.2f}), "
                  f"{r.get('steps', '-')} steps, {r.get('train_seconds', r.get('seconds'))} s", flush=True)
            save(results, args.out, quiet=True)  # keep what is done if the run is cut off
    save(results, args.out)


if __name__ == "__main__":
    main()
