"""Noise2Self (Batson & Royer, ICML 2019): J-invariant training on a grid of masked pixels."""

from __future__ import annotations

import torch

from .base import Method
from .masking import grid_mask, masked_mse, replace_with_donut_mean


class Noise2Self(Method):
    name = "n2s"
    title = "Noise2Self"
    paper = "Batson & Royer, Noise2Self: Blind Denoising by Self-Supervision, ICML 2019"
    defaults = {"grid": 4, "invariant_inference": False}

    def training_loss(self, net, batch, gen):
        mask = grid_mask((batch.shape[0], *batch.shape[2:]), int(self.options["grid"]), gen, batch.device)
        prediction = net(replace_with_donut_mean(batch, mask))
        return masked_mse(prediction, batch, mask)

    def predict(self, net, x):
        if not self.options["invariant_inference"]:
            return net(x)
        # Strict J-invariance: k^d passes, each pixel predicted only from the pass that masked it.
        k = int(self.options["grid"])
        out = torch.zeros_like(x)
        spatial = x.shape[2:]
        for phase in torch.cartesian_prod(*[torch.arange(k)] * len(spatial)).reshape(-1, len(spatial)):
            mask = torch.ones((x.shape[0], *spatial), dtype=torch.bool, device=x.device)
            for axis, p in enumerate(phase.tolist()):
                coord = torch.arange(spatial[axis], device=x.device)
                view = [1] * (len(spatial) + 1)
                view[axis + 1] = spatial[axis]
                mask &= ((coord - p) % k == 0).reshape(view)
            prediction = net(replace_with_donut_mean(x, mask))
            out = torch.where(mask[:, None], prediction, out)
        return out
