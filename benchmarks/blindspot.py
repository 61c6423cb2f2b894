"""Issue 15, part 2: would a network that is blind by construction make a better prior for the posterior?

Laine et al. (NeurIPS 2019) build the blind spot into the network: four branches each see only the half-plane
above the pixel (convolutions and poolings shifted down, one more row at the end), on the input rotated by
0/90/180/270 degrees; 1x1 layers merge them into a prior mean and variance for every pixel at once, trained on
all pixels with the marginal likelihood N(y; mu, prior variance + noise variance). The posterior mean weighs
the pixel against that prior. This script trains such a network on the noisy Train400 images (B1) for
``--minutes`` and scores the prior mean and the posterior on the first ``--images`` BSD68 images, to compare
with N-net at the same budget (BENCHMARKS.md, "Posterior"). It is a measurement, not part of the package.

``--known``: the noise std is the true 25 (an oracle); else a pointwise noise head maps the prior mean to it
(as N-net's), with ``--reg`` x the prior's share of the variance added to the loss: only the sum of the two
variances is identified, and the penalty gives the noise head the part a function of the signal can explain.

    python benchmarks/blindspot.py --threads 1 --minutes 10 --lr 1e-3 --known
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from _common import base_parser, machine, psnr, save
from bsd68 import load
from torch import nn

PATCH = 64


def shift_down(x: torch.Tensor, rows: int = 1) -> torch.Tensor:
    return F.pad(x, (0, 0, rows, 0))[:, :, : x.shape[2]]


class UpConv(nn.Conv2d):
    """A 3x3 convolution that sees only its own row and the rows above it."""

    def forward(self, x):
        return super().forward(shift_down(x))


def block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(UpConv(c_in, c_out, 3, padding=1), nn.LeakyReLU(0.1, True),
                         UpConv(c_out, c_out, 3, padding=1), nn.LeakyReLU(0.1, True))


class HalfPlaneUNet(nn.Module):
    """A U-Net whose output at a pixel depends only on the pixels strictly above it."""

    def __init__(self, features: int, depth: int):
        super().__init__()
        widths = [features * 2**level for level in range(depth + 1)]
        self.encoders = nn.ModuleList(block(1 if level == 0 else widths[level - 1], widths[level])
                                      for level in range(depth))
        self.bottleneck = block(widths[depth - 1], widths[depth])
        self.decoders = nn.ModuleList(block(widths[level + 1] + widths[level], widths[level])
                                      for level in reversed(range(depth)))

    def forward(self, x):
        skips = []
        for encode in self.encoders:
            x = encode(x)
            skips.append(x)
            x = F.max_pool2d(shift_down(x), 2)  # the shift keeps a pooled row from seeing the row below
        x = self.bottleneck(x)
        for decode, skip in zip(self.decoders, reversed(skips)):
            x = decode(torch.cat([F.interpolate(x, scale_factor=2.0, mode="nearest"), skip], 1))
        return shift_down(x)  # the last row down: the pixel's own row is hidden too


class BlindSpotNet(nn.Module):
    """Prior mean and variance per pixel from the four half-planes around it; and a pointwise noise head."""

    def __init__(self, features: int, depth: int):
        super().__init__()
        self.body = HalfPlaneUNet(features, depth)
        self.merge = nn.Sequential(nn.Conv2d(4 * features, 2 * features, 1), nn.LeakyReLU(0.1, True),
                                   nn.Conv2d(2 * features, features, 1), nn.LeakyReLU(0.1, True),
                                   nn.Conv2d(features, 2, 1))
        self.noise = nn.Sequential(nn.Conv2d(1, 16, 1), nn.SiLU(), nn.Conv2d(16, 1, 1))

    def forward(self, x):
        n = x.shape[0]
        if x.shape[2] == x.shape[3]:  # the four rotations as one batch
            out = self.body(torch.cat([torch.rot90(x, k, (2, 3)) for k in range(4)]))
            parts = [torch.rot90(out[k * n:(k + 1) * n], -k, (2, 3)) for k in range(4)]
        else:
            parts = [torch.rot90(self.body(torch.rot90(x, k, (2, 3))), -k, (2, 3)) for k in range(4)]
        out = self.merge(torch.cat(parts, 1))
        return out[:, :1], F.softplus(out[:, 1:]) + 1e-4

    def noise_variance(self, mean):
        return F.softplus(self.noise(mean)) ** 2 + 1e-6


def check_blind(net: BlindSpotNet) -> None:
    x = torch.zeros(1, 1, PATCH, PATCH, requires_grad=True)
    net(x)[0][0, 0, PATCH // 2, PATCH // 2].backward()
    seen = x.grad[0, 0] != 0
    if seen[PATCH // 2, PATCH // 2] or not seen.any():
        raise AssertionError("the network is not blind to its own pixel")


def main():
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--batch", type=int, default=4, help="patches per step (each goes through 4 rotations)")
    parser.add_argument("--features", type=int, default=32)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-3, help="the noise head learns at 10x")
    parser.add_argument("--known", action="store_true", help="the true noise std (25) instead of a learned one")
    parser.add_argument("--reg", type=float, default=0.01, help="weight of the prior-share penalty")
    parser.add_argument("--images", type=int, default=17, help="BSD68 images scored (the first N)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    train, noisy, clean = load(args.data)
    offset, scale = float(train.mean()), float(train.std())
    images = torch.from_numpy((train - offset) / scale)[:, None]
    known_variance = (25.0 / scale) ** 2

    net = BlindSpotNet(args.features, args.depth)
    check_blind(net)
    noise_parameters = list(net.noise.parameters())
    others = [p for p in net.parameters() if all(p is not q for q in noise_parameters)]
    optimizer = torch.optim.Adam([{"params": others, "lr": args.lr},
                                  {"params": noise_parameters, "lr": 10 * args.lr}])

    def noise_variance(mean):
        return torch.full_like(mean, known_variance) if args.known else net.noise_variance(mean)

    def patches():
        pick = torch.randint(0, images.shape[0], (args.batch,), generator=gen)
        ys = torch.randint(0, images.shape[2] - PATCH, (args.batch,), generator=gen).tolist()
        xs = torch.randint(0, images.shape[3] - PATCH, (args.batch,), generator=gen).tolist()
        out = torch.stack([images[i, :, y:y + PATCH, x:x + PATCH] for i, y, x in zip(pick.tolist(), ys, xs)])
        if torch.rand(1, generator=gen) < 0.5:
            out = out.flip(3)
        return torch.rot90(out, int(torch.randint(0, 4, (1,), generator=gen)), (2, 3))

    start, step = time.perf_counter(), 0
    while time.perf_counter() - start < args.minutes * 60:
        y = patches()
        mean, prior_variance = net(y)
        total = prior_variance + noise_variance(mean)
        loss = (0.5 * torch.log(total) + 0.5 * (y - mean) ** 2 / total).mean()
        if not args.known:
            loss = loss + args.reg * (prior_variance / total).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        step += 1
        if step % 100 == 0:
            print(f"step {step}, {time.perf_counter() - start:.0f} s, loss {float(loss.detach()):.4f}", flush=True)
    train_seconds = time.perf_counter() - start

    net.eval()
    scores = {"prior mean": [], "posterior": []}
    start = time.perf_counter()
    with torch.no_grad():
        for image, truth in list(zip(noisy, clean))[: args.images]:
            h, w = image.shape
            padded = np.pad((image - offset) / scale, ((0, (-h) % 4), (0, (-w) % 4)), mode="reflect")
            x = torch.from_numpy(padded.astype(np.float32))[None, None]
            mean, prior_variance = net(x)
            noise = noise_variance(mean)
            posterior = (x * prior_variance + mean * noise) / (prior_variance + noise)
            for name, estimate in (("prior mean", mean), ("posterior", posterior)):
                scores[name].append(psnr(truth, estimate[0, 0, :h, :w].numpy() * scale + offset))
    results = {"benchmark": "B1, blind-spot network prior (Laine et al. 2019)", "machine": machine(),
               "settings": {k: getattr(args, k) for k in ("minutes", "batch", "features", "depth", "lr", "known",
                                                          "reg", "images", "seed")},
               "steps": step, "train_seconds": round(train_seconds, 1),
               "noise_std": round(float(noise.sqrt().mean()) * scale, 2),
               "predict_seconds": round(time.perf_counter() - start, 1),
               "psnr": {k: round(float(np.mean(v)), 3) for k, v in scores.items()}}
    print(results["psnr"], f"steps {step}, noise std {results['noise_std']}", flush=True)
    save(results, args.out)


if __name__ == "__main__":
    main()
