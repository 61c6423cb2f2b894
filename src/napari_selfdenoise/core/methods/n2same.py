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
from .options import BLIND_RADIUS, Citation, Option


class Noise2Same(Method):
    name = "n2same"
    title = "Noise2Same"
    summary = "Noise2Same: invariance as a loss term (Xie, Wang & Ji 2020)"
    citation = Citation("Xie Y., Wang Z. & Ji S. Noise2Same: Optimizing A Self-Supervised Bound for Image "
                        "Denoising. NeurIPS 2020.", "10.48550/arXiv.2010.11971")
    preferred_normalization = "meanstd"
    # J: ~0.5 % of pixels, one per box; replaced by N(0, 0.2) noise (or the donut neighbour mean).
    option_specs = (
        Option("lambda_inv", 2.0, low=0, high=100, label="λ invariance", step=0.5,
               help="Noise2Same: weight of the invariance term (2 for mean/std-normalised input)"),
        Option("mask_fraction", 0.005, low=0, high=1, low_open=True, help="fraction of the pixels in J per patch"),
        Option("replacement", "gaussian", choices=("gaussian", "donut"),
               help="what replaces the pixels of J: gaussian noise or the mean of their neighbours (donut)"),
        Option("replacement_std", 0.2, low=0, help="std of the gaussian replacement (normalised units)"),
        BLIND_RADIUS,
    )

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
