"""Noise2Self (Batson & Royer, ICML 2019): J-invariant training on a grid of masked pixels."""

from __future__ import annotations

import torch

from .base import Method
from .blind_radius import grid_spacing
from .masking import grid_mask, hide_blind_spots, masked_mse, phase_grid_mask, replace_with_donut_mean
from .options import BLIND_RADIUS, Citation, Option


class Noise2Self(Method):
    name = "n2s"
    title = "Noise2Self"
    summary = "Noise2Self: J-invariant grid masking (Batson & Royer 2019)"
    citation = Citation("Batson J. & Royer L. Noise2Self: Blind Denoising by Self-Supervision. ICML 2019.",
                        "10.48550/arXiv.1901.11365")
    option_specs = (
        Option("grid", 4, low=2, help="spacing of the grid of masked pixels (J): one pixel in grid**d per step"),
        Option("invariant_inference", False,
               help="predict strictly J-invariantly (grid**d passes, each pixel from the pass that hid it)"),
        BLIND_RADIUS,
    )

    @property
    def spacing(self) -> int:
        """The grid of J: wide enough that the hidden squares of ``blind_radius`` leave pixels between them."""
        return grid_spacing(self.options["grid"], self.options["blind_radius"])

    def training_loss(self, net, batch, gen):
        mask = grid_mask((batch.shape[0], *batch.shape[2:]), self.spacing, gen, batch.device)
        hidden = hide_blind_spots(batch, mask, self.options["blind_radius"], replace_with_donut_mean)
        return masked_mse(net(hidden), batch, mask)

    def predict(self, net, x):
        if not self.options["invariant_inference"]:
            return net(x)
        # Strict J-invariance: k^d passes, each pixel predicted only from the pass that masked it.
        k, dims = self.spacing, x.dim() - 2
        out = torch.zeros_like(x)
        for phase in torch.cartesian_prod(*[torch.arange(k)] * dims).reshape(-1, dims).tolist():
            mask = phase_grid_mask(x, phase, k)
            prediction = net(hide_blind_spots(x, mask, self.options["blind_radius"], replace_with_donut_mean))
            out = torch.where(mask[:, None], prediction, out)
        return out
