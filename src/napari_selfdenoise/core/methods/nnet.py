"""N-net (Ollion et al. 2021, "Joint self-supervised blind denoising and noise estimation").

A denoiser D-net and a noise network N-net are trained together from the start: N-net maps D-net's
signal estimate to a per-pixel noise distribution (a Gaussian, or a mixture of K Gaussians for skewed real
noise), and the loss is the negative log-likelihood of the hidden (masked) observations under it.
Masking: a random grid (spacing 3-5, random phase) per step, masked pixels replaced by the mean of their
direct neighbours. Outputs: the denoised image and a per-pixel noise-std map.
The noise head learns at ``noise_lr`` times the learning rate (default 10): at the D-net's rate it stays
far too flat within a training budget (B3 in BENCHMARKS.md, speckle noise: 14-27 % error at 1x, 6-9 % at
10x), because its few weights must turn a narrow band of normalised signal into a steep std curve.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import SelfDenoiseError
from ..networks import mixture_std
from .base import Method
from .masking import donut_mean, grid_mask


class NoiseModelNet(Method):
    name = "nnet"
    title = "N-net (joint denoising and noise estimation)"
    paper = ("Ollion, Ollion, Gassiat, Lehéricy & Le Corff, Joint self-supervised blind denoising and "
             "noise estimation, arXiv:2102.08023 (2021)")
    outputs = ("denoised", "noise_std")
    defaults = {"mixture": 1, "grid_min": 3, "grid_max": 5, "noise_features": 32, "noise_lr": 10.0,
                "structure": False}

    def __init__(self, options=None):
        super().__init__(options)
        if int(self.options["mixture"]) not in (1, 2, 3):
            raise SelfDenoiseError("nnet option mixture (K) must be 1, 2 or 3")
        if not 2 <= int(self.options["grid_min"]) <= int(self.options["grid_max"]):
            raise SelfDenoiseError("nnet options need 2 <= grid_min <= grid_max")
        if not float(self.options["noise_lr"]) > 0:
            raise SelfDenoiseError("nnet option noise_lr (learning-rate factor of the noise head) must be > 0")

    def architecture(self, channels, dims, depth, features):
        return {"kind": "nnet", "in_channels": channels, "out_channels": channels * len(self.outputs),
                "dims": dims, "depth": depth, "features": features, "n2v2": False,
                "mixture": int(self.options["mixture"]), "noise_features": int(self.options["noise_features"]),
                "structure": bool(self.options["structure"])}

    def parameter_groups(self, net, lr):
        """D-net at ``lr`` (the first group, whose rate the front ends show), noise head at ``noise_lr * lr``."""
        return [{"params": list(net.denoiser.parameters()), "lr": lr},
                {"params": list(net.noise.parameters()), "lr": lr * float(self.options["noise_lr"])}]

    def training_loss(self, net, batch, gen):
        low, high = int(self.options["grid_min"]), int(self.options["grid_max"])
        spacing = int(torch.randint(low, high + 1, (1,), generator=gen))
        mask = grid_mask((batch.shape[0], *batch.shape[2:]), spacing, gen, batch.device)
        signal, params = net(torch.where(mask[:, None], direct_neighbour_mean(batch), batch))
        head = getattr(net, "module", net).noise  # net may be the DistributedDataParallel wrapper
        return mixture_nll(batch, signal, head.widen_by_structure(params, signal), mask)

    def predict(self, net, x):
        signal, params = net(x)
        return torch.cat([signal, mixture_std(*params)], dim=1)

    def denormalize_output(self, name, values, normalization):
        if name == "noise_std":  # a spread: scale only, no offset
            scale = np.asarray(normalization.scale, np.float32).reshape((1, -1) + (1,) * (values.ndim - 2))
            return np.asarray(values, np.float32) * scale
        return normalization.invert(values)


def direct_neighbour_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of the 2*d direct neighbours (4 in 2-D, 6 in 3-D), mirrored at the borders."""
    return donut_mean(x, diagonals=False)


def mixture_nll(observed, signal, params, mask) -> torch.Tensor:
    """Mean negative log-likelihood of ``observed`` at masked pixels under the predicted mixture."""
    weights, offsets, sigmas = (p.float() for p in params)
    residual = (observed.float() - signal.float()).unsqueeze(2) - offsets  # (B, C, K, ...)
    log_components = (torch.log(weights.clamp_min(1e-12)) - torch.log(sigmas)
                      - 0.5 * math.log(2 * math.pi) - 0.5 * (residual / sigmas) ** 2)
    nll = -torch.logsumexp(log_components, dim=2)  # (B, C, ...)
    weights_mask = mask[:, None].to(nll.dtype).expand_as(nll)
    return (nll * weights_mask).sum() / weights_mask.sum().clamp_min(1)
