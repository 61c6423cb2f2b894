"""Reading zarr stores (core/io/zarr_images.py): chunks never written read as the fill value, with a warning
(damaged chunks: tests/security/test_hostile_files.py)."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import zarr

from napari_selfdenoise.core.io.images import read_image


def test_zarr_missing_chunks_read_as_fill_value_with_a_warning(tmp_path):
    array = zarr.create_array(str(tmp_path / "holes.zarr"), shape=(2, 32, 32), chunks=(1, 16, 16),
                              dtype="uint16", fill_value=7, dimension_names=("t", "y", "x"))
    array[0] = 100  # only the first frame's chunks are written
    with pytest.warns(UserWarning, match="4 of 8 chunks are not stored; they read as the fill value 7"):
        image = read_image(tmp_path / "holes.zarr", lazy=True)
    assert image.axes == "TYX" and isinstance(image.data, da.Array)
    assert (np.asarray(image.data[1]) == 7).all() and (np.asarray(image.data[0]) == 100).all()
