"""Adding a method is one class plus its registration (issue 17): a toy method, registered in the test,
appears in ``selfdenoise train --help`` with its option, trains, and its paper is what a bioimage.io export
cites. The Train widget's part is tests/napari/test_widget_registry.py."""

from __future__ import annotations

import re
import zipfile

import numpy as np
import pytest
import yaml
from toy_method import ToyMethod, register_toy

from napari_selfdenoise.cli import main
from napari_selfdenoise.core.bmz import export_bmz
from napari_selfdenoise.core.data.synthetic import add_noise, fluorescence_image
from napari_selfdenoise.core.denoiser import Denoiser
from napari_selfdenoise.core.errors import SelfDenoiseError
from napari_selfdenoise.core.methods import METHODS, get_method, register
from napari_selfdenoise.core.methods.base import Method
from napari_selfdenoise.core.methods.options import Option

TINY = {"patch": 32, "batch": 2, "features": 4, "depth": 2, "steps_per_epoch": 3, "seed": 0, "device": "cpu"}


@pytest.fixture
def toy(monkeypatch):
    return register_toy(monkeypatch)


def train_help(capsys) -> str:
    with pytest.raises(SystemExit) as done:
        main(["train", "--help"])
    assert done.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines: compare words


def test_the_cli_help_lists_a_registered_method_and_its_options(toy, capsys):
    text = train_help(capsys)
    assert re.search(r"--method METHOD auto .* or one of: [\w, ]*\btoy --axes", text)  # the method choices
    assert "toy: toy_grid=3, blind_radius=0" in text


def test_the_cli_help_lists_every_methods_options_with_their_defaults(capsys):
    text = train_help(capsys)
    assert "toy" not in text  # gone again after its test
    assert "nnet: mixture=1, grid_min=3" in text and "n2v2: mask_fraction=0.0625" in text


def test_the_mixture_flag_is_described_by_its_option_spec(monkeypatch, capsys):
    nnet = METHODS["nnet"]
    specs = tuple(Option("mixture", 2, low=1, high=5, help="spec-made words") if o.name == "mixture" else o
                  for o in nnet.option_specs)
    monkeypatch.setattr(nnet, "option_specs", specs)
    assert "--mixture K nnet only, the same as --option mixture=K: spec-made words (from 1 to 5; default 2)" \
        in train_help(capsys)


def test_a_registered_method_trains_and_its_export_cites_its_paper(toy, tmp_path):
    image = add_noise(fluorescence_image((64, 64), seed=3), sigma=0.15, seed=4)
    model = Denoiser("toy", "YX", steps=3, method_options={"toy_grid": 4}, **TINY).fit(image)
    assert model.method.options == {"toy_grid": 4, "blind_radius": 0}
    package = export_bmz(model, tmp_path / "toy.zip")
    with zipfile.ZipFile(package) as archive:
        rdf = yaml.safe_load(archive.read("rdf.yaml"))
        readme = archive.read("README.md").decode()
    assert rdf["cite"] == [{"text": ToyMethod.citation.text, "doi": ToyMethod.citation.doi}]
    assert ToyMethod.citation.text in readme and f"https://doi.org/{ToyMethod.citation.doi}" in readme
    assert "toy" in rdf["tags"] and rdf["name"].startswith("Toy masking denoiser")
    back = Denoiser.load(package)  # and the package comes back as the toy
    assert back.config.method == "toy" and back.method.options["toy_grid"] == 4
    assert np.allclose(back.predict(image), model.predict(image), atol=1e-5)


def test_a_registered_methods_options_are_checked_from_its_specs(toy):
    assert ToyMethod.defaults == {"toy_grid": 3, "blind_radius": 0}
    for bad, words in (({"toy_grid": "abc"}, "whole number"), ({"toy_grid": 9}, "from 2 to 6"),
                       ({"toy_gird": 3}, "no option toy_gird"), ({"blind_radius": 7}, "0 to 4")):
        with pytest.raises(SelfDenoiseError, match=words) as error:
            get_method("toy", bad)
        assert "\n" not in str(error.value)


def test_defaults_are_made_from_the_specs_never_written():
    with pytest.raises(TypeError, match="option_specs"):
        type("Written", (Method,), {"defaults": {"grid": 4}})
    variant = type("Variant", (Method,), {"option_specs": (Option("grid", 4, help="grid"),)})
    assert variant.defaults == {"grid": 4}


def test_registering_needs_the_facts_the_front_ends_show():
    nameless = type("Nameless", (Method,), {"name": "nameless", "title": "Nameless", "summary": "Nameless: none"})
    with pytest.raises(TypeError, match="citation"):
        register(nameless)
    assert "nameless" not in METHODS
