"""Data-parallel training under ``torchrun``: two CPU processes with the Gloo backend.

The global batch is cut into processes x accumulate shards, each drawn from its own random stream, so
two processes must train exactly like one process with ``accumulate=2`` (same patches, same masks,
gradients averaged the same way) and differently from one process with ``accumulate=1``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tifffile
import torch

from napari_selfdenoise.core.config import TrainConfig
from napari_selfdenoise.core.data.synthetic import add_noise, fluorescence_image
from napari_selfdenoise.core.denoiser import Denoiser
from napari_selfdenoise.core.errors import SelfDenoiseError

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="this PyTorch build has no Gloo backend")


def torchrun(*args, timeout=300) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node 2 ...`` (standalone: a free local port). The generous
    timeout is for busy shared machines; on timeout the workers are killed with the launcher."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *map(str, args)]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                          start_new_session=True) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)


def weights_difference(a: Denoiser, b: Denoiser) -> float:
    wa, wb = a.network.state_dict(), b.network.state_dict()
    return max(float((wa[k] - wb[k]).abs().max()) for k in wa)


def test_two_processes_train_like_one_with_two_shards(tmp_path):
    image = add_noise(fluorescence_image((96, 96), seed=0), sigma=0.1, seed=1)
    tifffile.imwrite(tmp_path / "a.tif", image)
    proc = torchrun("-m", "napari_selfdenoise.cli", "train", tmp_path / "a.tif", "--axes", "YX", "--method", "n2v2",
                    "--steps", "4", "--steps-per-epoch", "2", "--patch", "32", "--batch", "4", "--features", "8",
                    "--lr", "1e-3", "--device", "cpu", "--out", tmp_path / "ddp.sdmodel")
    assert proc.returncode == 0, proc.stderr
    assert "2 processes (cpu), batch 2 each" in proc.stdout
    # Rank 0 alone reports and writes: one summary, one model file, no temporary files left.
    assert proc.stdout.count("model saved to") == 1, proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tif", "ddp.sdmodel"]

    ddp = Denoiser.load(tmp_path / "ddp.sdmodel")
    assert ddp.state.step == 4 and ddp.config.batch == 4
    config = ddp.config.to_dict()
    one = Denoiser(config=TrainConfig.from_dict({**config, "accumulate": 2})).fit(image)
    assert weights_difference(ddp, one) < 1e-6
    np.testing.assert_allclose(ddp.history["val_loss"], one.history["val_loss"], rtol=1e-6)
    np.testing.assert_allclose(ddp.history["train_loss"], one.history["train_loss"], rtol=1e-6)
    # Not equal by accident: one shard of 4 draws other patches and masks and ends elsewhere.
    other = Denoiser(config=TrainConfig.from_dict(config)).fit(image)
    assert weights_difference(ddp, other) > 1e-4


STOP_SCRIPT = textwrap.dedent("""
    import json, sys
    import torch.distributed as dist
    from napari_selfdenoise.core.training import distributed
    from napari_selfdenoise.core.denoiser import Denoiser
    from napari_selfdenoise.core.data.synthetic import add_noise, fluorescence_image

    group = distributed.init_from_env("cpu")
    image = add_noise(fluorescence_image((64, 64), seed=0), sigma=0.1, seed=1)
    model = Denoiser("n2s", "YX", steps=50, steps_per_epoch=100, patch=32, batch=4, features=4, device="cpu")
    events = []
    for event in model.train(image):
        events.append(event)
        if group.rank == 1 and event.step == 2:
            model.stop()  # only this process is asked to stop
    curves = [e.step for e in events if "noise_curve" in e.extra]
    with open(sys.argv[1] + f"/rank{group.rank}.json", "w") as f:
        json.dump({"steps": [e.step for e in events], "stopped": events[-1].stopped, "curves": curves,
                   "val": model.history["val_loss"]}, f)
    distributed.shutdown()
""")


def test_a_stop_on_one_process_ends_all_at_the_same_step(tmp_path):
    script = tmp_path / "stop.py"
    script.write_text(STOP_SCRIPT)
    proc = torchrun(script, tmp_path)
    assert proc.returncode == 0, proc.stderr
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for result in ranks:
        assert result["steps"] == [1, 2, 3] and result["stopped"]
    assert ranks[0]["val"] == ranks[1]["val"] and len(ranks[0]["val"]) == 1  # rank 0's, broadcast
    assert ranks[0]["curves"] == [3] and ranks[1]["curves"] == []  # live data on rank 0 only


def test_batch_must_split_into_equal_shards():
    image = add_noise(fluorescence_image((64, 64), seed=0), sigma=0.1, seed=1)
    with pytest.raises(SelfDenoiseError, match="multiple of accumulate"):
        Denoiser("n2s", "YX", batch=6, accumulate=4)
    model = Denoiser("n2s", "YX", steps=2, patch=32, batch=4, accumulate=2, features=4, device="cpu").fit(image)
    assert model._trainer.shard_size == 2 and len(model._trainer.samplers) == 2
