"""Noise2Same (Xie, Wang & Ji, NeurIPS 2020): self-supervision without J-invariance.

loss = mean over all pixels (f(x) - x)^2 + lambda_inv * sqrt(mean over J (f(x) - f(x_J^c))^2)

The first term lets the network see every pixel (no blind spot); the second bounds how much the output at
J depends on the input at J. lambda_inv = 2 sigma_loss; with standardised input sigma <= 1, hence the
default 2 (Theorem 1). This method therefore asks for mean/std normalisation.
"""

from __future__ import annotations

import torch

from .base import Method
from .masking import hide_blind_spots, replace_with_donut_mean, stratified_mask


class Noise2Same(Method):
    name = "n2same"
    title = "Noise2Same"
    paper = "Xie, Wang & Ji, Noise2Same: Optimizing A Self-Supervised Bound for Image Denoising, NeurIPS 2020"
    preferred_normalization = "meanstd"
    # J: ~0.5 % of pixels, one per box; replaced by N(0, 0.2) noise (or the donut neighbour mean).
    defaults = {"lambda_inv": 2.0, "mask_fraction": 0.005, "replacement": "gaussian", "replacement_std": 0.2,
                "blind_radius": 0}

    def __init__(self, options=None):
        super().__init__(options)
        if self.options["replacement"] not in ("gaussian", "donut"):
            from ..errors import SelfDenoiseError

            raise SelfDenoiseError("n2same option replacement must be 'gaussian' or 'donut'")

    def _replace(self, batch, mask, gen):
        if self.options["replacement"] == "gaussian":
            noise = torch.randn(batch.shape, generator=gen).to(batch.device, batch.dtype)
            return torch.where(mask[:, None], noise * float(self.options["replacement_std"]), batch)
        return replace_with_donut_mean(batch, mask)

    def training_loss(self, net, batch, gen):
        mask = stratified_mask((batch.shape[0], *batch.shape[2:]), float(self.options["mask_fraction"]),
                               gen, batch.device)
        masked_input = hide_blind_spots(batch, mask, self.options["blind_radius"],
                                        lambda x, m: self._replace(x, m, gen))
        # One forward pass over both inputs: the same cost as two, half the Python overhead.
        both = net(torch.cat([batch, masked_input]))
        full, masked = both[: len(batch)], both[len(batch):]
        return noise2same_loss(full, masked, batch, mask, float(self.options["lambda_inv"]))


def noise2same_loss(full: torch.Tensor, masked: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                    lambda_inv: float) -> torch.Tensor:
    """The Noise2Same objective; ``mask`` is (B, [Z,] Y, X) and masks every channel."""
    reconstruction = ((full.float() - target.float()) ** 2).mean()
    weights = mask[:, None].to(full.dtype).expand_as(full)
    invariance = (((full.float() - masked.float()) ** 2) * weights).sum() / weights.sum().clamp_min(1)
    return reconstruction + lambda_inv * torch.sqrt(invariance + 1e-12)
