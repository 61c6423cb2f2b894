"""A toy method for the tests that prove a new method is one class plus its registration (issue 17):
the CLI's help, the Train widget and bioimage.io exports find it with no other change.

Importable from any test as ``toy_method``: pytest puts tests/ (the folder of the top conftest.py) on
``sys.path``.
"""

from __future__ import annotations

from napari_selfdenoise.core.methods import METHODS, register
from napari_selfdenoise.core.methods.base import Method
from napari_selfdenoise.core.methods.blind_radius import grid_spacing
from napari_selfdenoise.core.methods.masking import grid_mask, hide_blind_spots, masked_mse, replace_with_donut_mean
from napari_selfdenoise.core.methods.options import BLIND_RADIUS, Citation, Option


class ToyMethod(Method):
    """Noise2Self with its own name, paper and grid option: a real method, small enough for a test."""

    name = "toy"
    title = "Toy masking"
    summary = "Toy masking: hidden grid pixels, a test's own method (Tester 2026)"
    citation = Citation("Tester T. A toy blind-spot method for registration tests. Journal of Tests 2026.",
                        "10.5555/toy.2026")
    option_specs = (
        Option("toy_grid", 3, low=2, high=6, label="toy grid", help="spacing of the toy's grid of hidden pixels"),
        BLIND_RADIUS,
    )

    def training_loss(self, net, batch, gen):
        spacing = grid_spacing(self.options["toy_grid"], self.options["blind_radius"])
        mask = grid_mask((batch.shape[0], *batch.shape[2:]), spacing, gen, batch.device)
        hidden = hide_blind_spots(batch, mask, self.options["blind_radius"], replace_with_donut_mean)
        return masked_mse(net(hidden), batch, mask)


def register_toy(monkeypatch) -> type[ToyMethod]:
    """Register the toy as a method module does; it is removed again when the test ends."""
    assert ToyMethod.name not in METHODS
    monkeypatch.setitem(METHODS, ToyMethod.name, ToyMethod)  # noted as absent before: undone by removing it
    register(ToyMethod)  # what a method's registration does, its checks included
    return ToyMethod
