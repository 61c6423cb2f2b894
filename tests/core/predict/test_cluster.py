"""dask.distributed prediction on a LocalCluster of 2 worker processes: the result equals the single-process
one bit for bit, for blocks of one stack and for several files; a worker killed mid-run is replaced and
the run still completes with a correct output; the CLI's --dask-scheduler drives the same code."""

from __future__ import annotations

import os
import signal

import distributed  # the [testing] extra installs it
import numpy as np
import pytest

from napari_selfdenoise.cli import main as cli_main
from napari_selfdenoise.core.data.synthetic import add_noise, fluorescence_image
from napari_selfdenoise.core.denoiser import Denoiser
from napari_selfdenoise.core.errors import SelfDenoiseError
from napari_selfdenoise.core.io.images import read_image, write_image
from napari_selfdenoise.core.predict.cluster import FileJob, predict_files

TILE = 48


@pytest.fixture(scope="module")
def client():
    # Processes, not threads: killing a worker must kill its tasks mid-flight.
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=None)
    client = distributed.Client(cluster)
    yield client
    client.close()
    cluster.close()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dist")
    stacks = []
    for k, frames in enumerate((3, 2)):
        clean = np.stack([fluorescence_image((96, 112), seed=10 * k + t) for t in range(frames)])
        stack = (add_noise(clean, "poisson_gaussian", photons=40, seed=k) * 1000).astype(np.uint16)
        write_image(folder / f"in{k}.ome.tif", stack, "TYX")
        stacks.append(stack)
    model = Denoiser("n2s", "TYX", patch=32, batch=4, features=8, depth=2, steps=2, steps_per_epoch=5)
    model.fit(stacks[0]).save(folder / "m.sdmodel")
    return folder, stacks, model


def test_blocks_of_several_files_equal_single_process(client, files, tmp_path):
    folder, stacks, model = files
    jobs = [FileJob(str(folder / f"in{k}.ome.tif"), None, {"denoised": tmp_path / f"out{k}.ome.zarr"})
            for k in range(2)]
    written = predict_files(folder / "m.sdmodel", jobs, client, tile=TILE, block=(48, 56))
    assert written == [tmp_path / "out0.ome.zarr", tmp_path / "out1.ome.zarr"]
    for k, stack in enumerate(stacks):
        np.testing.assert_array_equal(read_image(tmp_path / f"out{k}.ome.zarr").data, model.predict(stack, tile=TILE))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out0.ome.zarr", "out1.ome.zarr"]


def test_a_killed_worker_is_replaced_and_the_output_is_complete(client, files, tmp_path):
    folder, stacks, model = files
    out = tmp_path / "out.ome.zarr"
    killed = []

    def kill_a_busy_worker(done, total):
        if killed or done == total:
            return
        pids = client.run(os.getpid)
        busy = [address for address, keys in client.processing().items() if keys] or list(pids)
        killed.append(busy[0])
        os.kill(pids[busy[0]], signal.SIGKILL)  # the nanny starts a new worker; dask reruns its tasks
        assert not out.exists()  # the final name appears only when every block is in

    job = FileJob(str(folder / "in0.ome.tif"), None, {"denoised": out})
    predict_files(folder / "m.sdmodel", [job], client, progress=kill_a_busy_worker, tile=TILE, block=(48, 56))
    assert killed
    np.testing.assert_array_equal(read_image(out).data, model.predict(stacks[0], tile=TILE))


def test_cli_dask_scheduler(client, files, tmp_path, capsys):
    folder, stacks, model = files
    out = tmp_path / "o.ome.zarr"
    args = ["predict", str(folder / "m.sdmodel"), str(folder / "in1.ome.tif"), "--out", str(out), "-q",
            "--tile", str(TILE), "--dask-scheduler", client.scheduler.address]
    assert cli_main(args) == 0
    np.testing.assert_array_equal(read_image(out).data, model.predict(stacks[1], tile=TILE))
    assert cli_main(args[:4] + [str(tmp_path / "o.ome.tif")] + args[5:]) == 2  # distributed writes OME-Zarr
    assert "write OME-Zarr" in capsys.readouterr().err


def test_a_failing_task_removes_the_outputs(client, files, tmp_path):
    folder, _, _ = files
    model = tmp_path / "m.sdmodel"
    model.write_bytes((folder / "m.sdmodel").read_bytes())

    def break_the_model(done, total):  # the tasks that start later fail on their worker
        if done == 1:
            model.write_bytes(b"not a model any more")

    job = FileJob(str(folder / "in0.ome.tif"), "TYX", {"denoised": tmp_path / "x.ome.zarr"})
    with pytest.raises(SelfDenoiseError, match="m.sdmodel"):
        predict_files(model, [job], client, progress=break_the_model, tile=TILE, block=(48, 56))
    assert [p.name for p in tmp_path.iterdir()] == ["m.sdmodel"]


def test_cli_workers_starts_and_closes_its_own_local_cluster(files, tmp_path, monkeypatch):
    folder, stacks, model = files
    clusters, sizes = [], []
    real_cluster = distributed.LocalCluster

    def recording_cluster(*args, **kwargs):
        sizes.append(kwargs["n_workers"])
        clusters.append(real_cluster(*args, **kwargs))
        return clusters[-1]

    monkeypatch.setattr(distributed, "LocalCluster", recording_cluster)
    out = tmp_path / "o.ome.zarr"
    args = ["predict", str(folder / "m.sdmodel"), str(folder / "in1.ome.tif"), "--out", str(out), "-q",
            "--tile", str(TILE), "--workers", "1"]
    assert cli_main(args) == 0
    np.testing.assert_array_equal(read_image(out).data, model.predict(stacks[1], tile=TILE))
    assert sizes == [1]
    assert clusters[0].status.name == "closed"  # no worker process outlives the command
    assert cli_main(args[:-1] + ["0"]) == 2
