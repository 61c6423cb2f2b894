"""CUDA paths (``pytest -m cuda``; skipped without a CUDA device; benchmarks/gpu.py runs them).

Training every method, the batch chosen from free memory, torchrun with one process on NCCL, prediction
(whole and streamed), TorchScript export, and the out-of-memory back-off with a real CUDA OOM (the
process's share of GPU memory capped).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tifffile
import torch

from napari_selfdenoise.core.data.synthetic import add_noise, fluorescence_image
from napari_selfdenoise.core.denoiser import Denoiser
from napari_selfdenoise.core.methods import method_names

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]

QUICK = dict(patch=64, steps=60, steps_per_epoch=20, device="cuda", seed=0)


@pytest.fixture(scope="module")
def pair():
    clean = fluorescence_image((256, 256), seed=3)
    return clean, add_noise(clean, "gaussian", sigma=0.15, seed=4)


def _mse(a, b):
    return float(np.mean((np.asarray(a, np.float64) - b) ** 2))


@pytest.fixture(scope="module")
def trained(pair):
    return Denoiser("n2s", "YX", **QUICK).fit(pair[1])


@pytest.mark.parametrize("method", method_names(include_classic=False))
@pytest.mark.parametrize("amp", [True, False])
def test_every_method_trains_on_cuda(pair, method, amp):
    clean, noisy = pair
    model = Denoiser(method, "YX", amp=amp, **QUICK)
    events = list(model.train(noisy))
    assert events[-1].done and all(np.isfinite(e.train_loss) for e in events)
    assert next(model.network.parameters()).device.type == "cpu"  # handed back after training
    assert all(v.device.type == "cpu" for v in model._trainer.best_weights.values())
    out = model.predict(noisy, device="cuda")
    assert out.shape == noisy.shape and out.dtype == np.float32 and np.isfinite(out).all()
    assert _mse(out, clean) < _mse(noisy, clean)


def test_batch_is_chosen_from_free_memory(pair):
    model = Denoiser("n2v2", "YX", **{**QUICK, "steps": 2}).fit(pair[1])
    batch = model.config.batch
    assert 16 <= batch <= 128 and batch & (batch - 1) == 0, batch  # a power of two, capped at 128 x 64^2
    assert model.state.step == 2


def test_prediction_on_cuda_matches_the_cpu(trained, pair):
    noisy = pair[1]
    on_gpu = trained.predict(noisy, device="cuda")
    on_cpu = trained.predict(noisy, device="cpu")
    np.testing.assert_allclose(on_gpu, on_cpu, atol=2e-2 * float(np.ptp(noisy)))  # TF32 / AMP on the GPU
    assert _mse(on_gpu, on_cpu) < 1e-3 * _mse(noisy, pair[0])


def test_streamed_prediction_on_cuda_equals_in_memory(trained, pair, tmp_path):
    stack = np.stack([pair[1]] * 3)
    expected = trained.predict(stack, axes="TYX", device="cuda", tile=128)
    trained.predict_to(stack, tmp_path / "out.ome.tif", axes="TYX", device="cuda", tile=128)
    # The same tile batches on the same device: equal up to the GPU's kernel choices.
    np.testing.assert_allclose(tifffile.imread(tmp_path / "out.ome.tif"), expected, rtol=1e-5, atol=1e-5)


def test_torchscript_export_runs_on_cuda(trained, pair, tmp_path):
    from napari_selfdenoise.core.bmz import export_bmz
    from napari_selfdenoise.core.nn.networks import ExportDenoiser

    export = ExportDenoiser(**trained.architecture)
    export.net.load_state_dict(trained.network.state_dict())
    scripted = torch.jit.script(export.eval()).cuda()
    x = torch.from_numpy(trained.normalization.apply(pair[1][None, None])).cuda()
    with torch.no_grad():
        eager = trained.network.cuda().eval()(x)
        np.testing.assert_allclose(scripted(x).cpu().numpy(), eager.cpu().numpy(), rtol=1e-4, atol=1e-4)
    trained.network.cpu()
    path = export_bmz(trained, tmp_path / "model.zip")
    assert Denoiser.load(path).predict(pair[1], device="cuda").shape == pair[1].shape


NCCL_SCRIPT = textwrap.dedent("""
    import json, sys
    import torch
    from napari_selfdenoise.core.training import distributed
    from napari_selfdenoise.core.denoiser import Denoiser
    from napari_selfdenoise.core.data.synthetic import add_noise, fluorescence_image

    torch.distributed.init_process_group("nccl")  # torchrun's environment, one process
    torch.cuda.set_device(0)
    group = distributed.current()
    image = add_noise(fluorescence_image((128, 128), seed=0), sigma=0.1, seed=1)
    model = Denoiser("n2v2", "YX", steps=6, steps_per_epoch=3, patch=64, batch=8, device="cuda").fit(image)
    summed = distributed.sum_over_processes([1.5, 2.0])
    broadcast = distributed.broadcast_from_main(3.25)
    with open(sys.argv[1], "w") as f:
        json.dump({"backend": torch.distributed.get_backend(), "world": group.world_size, "step": model.state.step,
                   "summed": summed, "broadcast": broadcast}, f)
    distributed.shutdown()
""")


def test_torchrun_one_process_on_nccl(tmp_path):
    if not torch.distributed.is_nccl_available():
        pytest.skip("this PyTorch build has no NCCL")
    script = tmp_path / "nccl.py"
    script.write_text(NCCL_SCRIPT)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
                           str(script), str(tmp_path / "out.json")], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "out.json").read_text())
    assert result == {"backend": "nccl", "world": 1, "step": 6, "summed": [1.5, 2.0], "broadcast": 3.25}


@pytest.fixture
def small_gpu_share():
    """Cap this process's GPU memory at about 1.5 GiB, so that a big batch really runs out."""
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(min(1.0, 1.5 * 1024**3 / total))
    try:
        yield
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()


def test_a_real_out_of_memory_backs_off_and_training_goes_on(pair, small_gpu_share):
    # 512 patches of 128^2 through a 64-feature U-Net need far more than 1.5 GiB in one pass.
    big = np.tile(pair[1], (2, 2))
    model = Denoiser("n2s", "YX", patch=128, batch=512, features=64, steps=3, steps_per_epoch=3, device="cuda",
                     amp=False)
    events = list(model.train(big))
    assert events[-1].done and events[-1].step == 3
    assert model._trainer.passes > 1
    assert any("out of CUDA memory" in note for note in events[-1].extra["notes"])


def test_prediction_out_of_memory_backs_off(trained, small_gpu_share):
    big = add_noise(fluorescence_image((2048, 2048), seed=5), sigma=0.15, seed=6)
    out = trained.predict(big, device="cuda", tile=1024, batch_size=64)
    assert out.shape == big.shape and np.isfinite(out).all()
