"""Short budgets on one image: train on a noisy image, score the result on that image (issue 15).

Each run trains a method (default settings unless given) on ONE noisy BSD68 image (Gaussian sigma 25) for
``--steps`` steps and scores the prediction against the clean image (PSNR, peak 255). The reference is the
oracle-tuned Gaussian blur (the best sigma for that image, chosen against the clean image). N-net runs are
scored twice from the same trained model: with its posterior (MMSE) inference and without it.
``--synthetic`` adds Poisson-Gaussian noise to a synthetic fluorescence image (core/data/synthetic.py) instead.

    python benchmarks/short_budget.py --threads 1 --images test001,test002 --runs n2v2,n2s --steps 300
    python benchmarks/short_budget.py --threads 1 --runs "n2v2:mask_fraction=0.002" --steps 300
"""

from __future__ import annotations

import json
import time

import numpy as np
import torch
from _common import add_training_arguments, base_parser, machine, psnr, save
from scipy import ndimage as ndi
from skimage.io import imread

from napari_selfdenoise import Denoiser
from napari_selfdenoise.core.data import synthetic


def parse_run(text: str):
    """``method[:key=value,...]`` -> (method, options); values are parsed as JSON where they can be."""
    method, _, rest = text.partition(":")
    options = {}
    for item in filter(None, rest.split(";")):
        key, _, value = item.partition("=")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return method, options


def best_gaussian(noisy, clean, peak):
    scores = {s: psnr(clean, ndi.gaussian_filter(noisy, s), peak) for s in np.arange(0.4, 3.01, 0.1)}
    sigma = max(scores, key=scores.get)
    return round(float(sigma), 1), scores[sigma]


def images(args):
    if args.synthetic:
        clean = synthetic.fluorescence_image((256, 256), seed=args.seed).astype(np.float32)
        noisy = synthetic.add_noise(clean, "poisson_gaussian", sigma=0.05, photons=args.photons, seed=args.seed + 1)
        yield "synthetic_poisson_gaussian", noisy.astype(np.float32), clean, 1.0
        return
    noisy_all = np.load(args.data / "BSD68" / "bsd68_gaussian25_seed68025_int16.npz")
    for name in args.images.split(","):
        clean = imread(args.data / "BSD68" / "clean" / f"{name}.png").astype(np.float32)
        yield name, noisy_all[name].astype(np.float32), clean, 255.0


def main():
    parser = base_parser(__doc__.splitlines()[0])
    add_training_arguments(parser, batch=16, features=32)
    parser.add_argument("--images", default="test001")
    parser.add_argument("--runs", default="n2v2", help="runs separated by ','; a run: method[:key=value;key=value]")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--synthetic", action="store_true")
    parser.add_argument("--photons", type=float, default=30.0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    runs = [parse_run(r) for r in args.runs.replace(" ", ",").split(",") if r]
    results = {"machine": machine(), "args": {k: str(v) for k, v in vars(args).items()}, "rows": []}
    for name, noisy, clean, peak in images(args):
        sigma, gauss = best_gaussian(noisy, clean, peak)
        base = psnr(clean, noisy, peak)
        print(f"{name}: input {base:.2f} dB, best Gaussian (sigma {sigma}) {gauss:.2f} dB ({gauss - base:+.2f})",
              flush=True)
        for method, options in runs:
            model = Denoiser(method, "YX", steps=args.steps, batch=args.batch, patch=args.patch, lr=args.lr, lr_decay=args.lr_decay,
                             depth=args.depth, features=args.features, seed=args.seed, device=args.device,
                             curve_every=0, method_options=options)
            start = time.perf_counter()
            model.fit(noisy)
            train_s = time.perf_counter() - start
            variants = {"": None}
            if method == "nnet":
                variants = {" posterior": True, " plain": False}
            for label, posterior in variants.items():
                if posterior is not None:
                    model.method.options["posterior"] = posterior
                start = time.perf_counter()
                out = model.predict(noisy)
                predict_s = time.perf_counter() - start
                score = psnr(clean, out, peak)
                row = {"image": name, "method": method + label, "options": options, "steps": args.steps,
                       "psnr": round(score, 2), "gain": round(score - base, 2), "gaussian_gain": round(gauss - base, 2),
                       "train_s": round(train_s, 1), "predict_s": round(predict_s, 2)}
                results["rows"].append(row)
                print(f"  {method}{label} {options}: {score:.2f} dB ({score - base:+.2f}), "
                      f"train {train_s:.0f} s, predict {predict_s:.2f} s", flush=True)
    save(results, args.out, quiet=True)


if __name__ == "__main__":
    main()
