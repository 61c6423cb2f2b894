"""Noise2Void (Krull et al., CVPR 2019) and N2V2 (Hoeck et al., ECCV-W 2022)."""

from __future__ import annotations

from .base import Method
from .masking import (
    hide_blind_spots,
    masked_mse,
    replace_with_neighbour_median,
    replace_with_random_neighbour,
    stratified_mask,
)
from .options import BLIND_RADIUS, Citation, Option, with_defaults


class Noise2Void(Method):
    name = "n2v"
    title = "Noise2Void"
    summary = "Noise2Void: random blind spots (Krull et al. 2019)"
    citation = Citation("Krull A., Buchholz T.-O. & Jug F. Noise2Void - Learning Denoising from Single Noisy "
                        "Images. CVPR 2019.", "10.1109/CVPR.2019.00223")
    # 0.2 % blind spots, replaced from a 5x5 window, as in the paper.
    option_specs = (
        Option("mask_fraction", 0.002, low=0, high=1, low_open=True,
               help="fraction of the pixels masked (blind spots) per patch"),
        Option("radius", 2, low=1, help="blind spots are replaced from the window of this radius around them"),
        BLIND_RADIUS,
    )

    def _mask(self, batch, gen):
        return stratified_mask((batch.shape[0], *batch.shape[2:]), float(self.options["mask_fraction"]),
                               gen, batch.device)

    def _replace(self, batch, mask, gen):
        return replace_with_random_neighbour(batch, mask, gen, int(self.options["radius"]))

    def training_loss(self, net, batch, gen):
        mask = self._mask(batch, gen)
        hidden = hide_blind_spots(batch, mask, self.options["blind_radius"], lambda x, m: self._replace(x, m, gen))
        return masked_mse(net(hidden), batch, mask)


class Noise2Void2(Noise2Void):
    name = "n2v2"
    title = "N2V2"
    summary = "N2V2: Noise2Void without checkerboard artefacts (Höck et al. 2022)"
    citation = Citation("Höck E., Buchholz T.-O., Brachmann A., Jug F. & Freytag A. N2V2 - Fixing Noise2Void "
                        "Checkerboard Artifacts with Modified Sampling Strategies and a Tweaked Network "
                        "Architecture. ECCV Workshops 2022.", "10.48550/arXiv.2211.08512")
    n2v2_network = True
    # Denser blind spots than N2V's 0.2 %: 1 pixel in 16 gives 30x more loss pixels per step, which is what
    # short budgets lack (issue 15: +1.9 dB after 300 steps on a natural image at 0.2 %). The replacement
    # median leaves out the other masked pixels, so the density does not leak the hidden values.
    option_specs = with_defaults(Noise2Void.option_specs, mask_fraction=0.0625)
    legacy_defaults = {"mask_fraction": 0.002}

    def _replace(self, batch, mask, gen):
        return replace_with_neighbour_median(batch, mask, int(self.options["radius"]), visible_only=True)
