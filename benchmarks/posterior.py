"""N-net's posterior (MMSE) inference on B1: how much it gains over the plain prediction, and its ceiling.

Trains N-net on the noisy Train400 images for ``--minutes`` (as bsd68.py does), or loads ``--model``, then
scores on the first ``--images`` BSD68 images: the plain prediction, the J-invariant (blind-spot) prior
alone, the posterior as shipped (option ``posterior``), and the posterior with an oracle prior variance
(the true squared error of the prior, per pixel and averaged over 5x5), which no estimate can beat.

    python benchmarks/posterior.py --threads 1 --minutes 10 --images 17 --save-model /tmp/nnet.sdmodel
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from _common import add_training_arguments, base_parser, machine, psnr, save
from bsd68 import load

from napari_selfdenoise import Denoiser
from napari_selfdenoise.core.methods import nnet


def train(args, images) -> Denoiser:
    model = Denoiser("nnet", "SYX", time_limit=args.minutes * 60, batch=args.batch, patch=args.patch,
                     lr=args.lr, lr_decay=args.lr_decay, depth=args.depth, features=args.features, steps_per_epoch=200, seed=args.seed)
    for event in model.train(images):
        pass
    print(f"trained {event.step} steps in {event.elapsed:.0f} s", flush=True)
    if args.save_model:
        model.save(args.save_model)
    return model


def oracle_posteriors(model, noisy, clean) -> dict[str, np.ndarray]:
    """The blind-spot prior and the posterior with the true error variance (normalised units inside)."""
    pads = [(0, (-n) % m) for n, m in zip(noisy.shape, model.network.pool_multiples)]
    as_tensor = lambda a: torch.from_numpy(
        model.normalization.apply(np.pad(a, pads, mode="reflect")[None, None]).astype(np.float32))
    x, truth, net = as_tensor(noisy), as_tensor(clean), model.network.eval()
    with torch.no_grad():
        prior = nnet.invariant_signal(net, x, nnet.POSTERIOR_SPACING, 0)
        error = (truth - prior) ** 2
        out = {"prior": prior}
        for window in (1, 5):
            variance = nnet.local_mean(error, window).clamp_min(1e-8)  # window 1: the pixel's own
            out[f"oracle{window}"] = nnet.posterior_mean(x, prior, variance, net.noise)
    crop = tuple(slice(0, n) for n in noisy.shape)
    return {k: model.normalization.invert(v.numpy())[0, 0][crop] for k, v in out.items()}


def main():
    parser = base_parser(__doc__.splitlines()[0])
    add_training_arguments(parser, batch=16, features=32)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--images", type=int, default=17, help="BSD68 images scored (the first N)")
    parser.add_argument("--model", type=Path, help="a trained N-net model file (skips training)")
    parser.add_argument("--save-model", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train_images, noisy, clean = load(args.data)
    model = Denoiser.load(args.model) if args.model else train(args, train_images)
    scores, seconds = {}, {"plain": 0.0, "posterior": 0.0}
    for y, x in zip(noisy[: args.images], clean[: args.images]):
        row = {}
        for name, posterior in (("plain", False), ("posterior", True)):
            model.method.options["posterior"] = posterior
            start = time.perf_counter()
            row[name] = model.predict(y, axes="YX")
            seconds[name] += time.perf_counter() - start
        row.update(oracle_posteriors(model, y, x))
        for name, image in row.items():
            scores.setdefault(name, []).append(psnr(x, image))
        print(" ".join(f"{k} {v[-1]:.2f}" for k, v in scores.items()), flush=True)
    result = {"machine": machine(), "images": args.images, "model": str(args.model or "trained here"),
              "psnr": {k: round(float(np.mean(v)), 3) for k, v in scores.items()},
              "predict_seconds": {k: round(v, 1) for k, v in seconds.items()}}
    save(result, args.out)


if __name__ == "__main__":
    main()
