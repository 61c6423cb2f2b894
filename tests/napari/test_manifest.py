"""The npe2 manifest: valid, importable, discovered by napari, and the reader/writer/sample entries right."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from npe2 import PluginManager, PluginManifest

import napari_selfdenoise

MANIFEST = Path(napari_selfdenoise.__file__).parent / "napari.yaml"
SAMPLE_KEYS = {"noisy_cells_2d", "noisy_cells_3d", "noisy_timelapse"}


@pytest.fixture(scope="module")
def manifest() -> PluginManifest:
    return PluginManifest.from_file(MANIFEST)  # parses and validates the schema


def test_manifest_validates_and_imports(manifest):
    assert manifest.name == "napari-selfdenoise"
    manifest.validate_imports()  # every python_name imports and resolves to a callable


def test_npe2_validate_cli():
    npe2_cli = Path(sys.executable).with_name("npe2")
    command = [str(npe2_cli)] if npe2_cli.exists() else [sys.executable, "-m", "npe2"]
    result = subprocess.run([*command, "validate", str(MANIFEST), "--imports"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "valid" in result.stdout


def test_installed_manifest_is_the_packaged_one(manifest):
    pm = PluginManager()
    pm.discover()
    installed = pm.get_manifest("napari-selfdenoise")
    assert installed.contributions.readers == manifest.contributions.readers
    assert installed.contributions.writers == manifest.contributions.writers


def test_reader_entry(manifest):
    (reader,) = manifest.contributions.readers
    assert reader.command == "napari-selfdenoise.get_reader"
    patterns = set(reader.filename_patterns)
    assert {"*.tif", "*.tiff", "*.ome.tif", "*.ome.tiff"} <= patterns
    assert {"*.czi", "*.nd2", "*.zarr"} <= patterns  # claimed only when bioio/aicsimageio import
    assert reader.accepts_directories  # OME-Zarr is a folder


def test_writer_entry(manifest):
    (writer,) = manifest.contributions.writers
    assert writer.command == "napari-selfdenoise.write_image"
    assert [str(t) for t in writer.layer_types] == ["image"]
    assert ".ome.tif" in writer.filename_extensions


def test_sample_entries(manifest):
    samples = manifest.contributions.sample_data
    assert {s.key for s in samples} == SAMPLE_KEYS
    commands = {c.id: c.python_name for c in manifest.contributions.commands}
    for sample in samples:
        assert sample.command in commands
