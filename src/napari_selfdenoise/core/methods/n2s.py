"""Noise2Self (Batson & Royer, ICML 2019): J-invariant training on a grid of masked pixels."""

from __future__ import annotations

import torch

from .base import Method
from .masking import grid_mask, hide_blind_spots, masked_mse, replace_with_donut_mean


class Noise2Self(Method):
    name = "n2s"
    title = "Noise2Self"
    paper = "Batson & Royer, Noise2Self: Blind Denoising by Self-Supervision, ICML 2019"
    defaults = {"grid": 4, "invariant_inference": False, "blind_radius": 0}

    @property
    def spacing(self) -> int:
        """The grid of J: wide enough that the hidden squares of ``blind_radius`` leave pixels between them."""
        return max(int(self.options["grid"]), 2 * self.options["blind_radius"] + 2)

    def training_loss(self, net, batch, gen):
        mask = grid_mask((batch.shape[0], *batch.shape[2:]), self.spacing, gen, batch.device)
        hidden = hide_blind_spots(batch, mask, self.options["blind_radius"], replace_with_donut_mean)
        return masked_mse(net(hidden), batch, mask)

    def predict(self, net, x):
        if not self.options["invariant_inference"]:
            return net(x)
        # Strict J-invariance: k^d passes, each pixel predicted only from the pass that masked it.
        k = self.spacing
        out = torch.zeros_like(x)
        spatial = x.shape[2:]
        for phase in torch.cartesian_prod(*[torch.arange(k)] * len(spatial)).reshape(-1, len(spatial)):
            mask = torch.ones((x.shape[0], *spatial), dtype=torch.bool, device=x.device)
            for axis, p in enumerate(phase.tolist()):
                coord = torch.arange(spatial[axis], device=x.device)
                view = [1] * (len(spatial) + 1)
                view[axis + 1] = spatial[axis]
                mask &= ((coord - p) % k == 0).reshape(view)
            prediction = net(hide_blind_spots(x, mask, self.options["blind_radius"], replace_with_donut_mean))
            out = torch.where(mask[:, None], prediction, out)
        return out
