"""Noise2Same's loss by hand, N-net's noise estimate against a known noise level, and the noise mixture's
validity (weights, sigmas, NLL and its gradients) for extreme inputs and degenerate images."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi
from scipy.stats import spearmanr

from napari_selfdenoise.core.data.normalize import Normalization
from napari_selfdenoise.core.data.synthetic import add_noise, fluorescence_image
from napari_selfdenoise.core.denoiser import Denoiser
from napari_selfdenoise.core.errors import SelfDenoiseError
from napari_selfdenoise.core.methods import get_method
from napari_selfdenoise.core.methods.n2same import noise2same_loss
from napari_selfdenoise.core.methods.nnet import mixture_nll
from napari_selfdenoise.core.nn.networks import NNet, NoiseHead, mixture_std


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------- Noise2Same loss


def test_n2same_loss_on_a_tiny_tensor():
    """Two channels, 2x2 pixels, one masked position: the numbers worked out by hand."""
    full = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 0.0], [1.0, 1.0]]]])
    target = torch.tensor([[[[0.0, 2.0], [3.0, 6.0]], [[0.0, 1.0], [1.0, 1.0]]]])
    masked = torch.tensor([[[[1.0, 0.0], [3.0, 4.0]], [[0.0, 3.0], [1.0, 1.0]]]])
    mask = torch.tensor([[[False, True], [False, False]]])
    # Reconstruction over all 8 values: (1 + 0 + 0 + 4 + 0 + 1 + 0 + 0) / 8. Invariance over J x channels:
    # ((2 - 0)^2 + (0 - 3)^2) / 2.
    reconstruction, invariance = 6 / 8, 13 / 2
    for lambda_inv in (2.0, 0.5, 0.0):
        loss = noise2same_loss(full, masked, target, mask, lambda_inv)
        assert loss.item() == pytest.approx(reconstruction + lambda_inv * math.sqrt(invariance), rel=1e-6)
    # Only J enters the invariance term: the masked pass's output elsewhere does not matter.
    elsewhere = masked.clone()
    elsewhere[..., 1, :] += 100.0
    assert noise2same_loss(full, elsewhere, target, mask, 2.0).item() == pytest.approx(
        reconstruction + 2.0 * math.sqrt(invariance), rel=1e-6)


class _FixedConv(torch.nn.Module):
    """``f(x) = scale * (x correlated with a fixed 3x3 kernel per channel, zero padding) + bias``.

    Deterministic and easy to recompute with numpy; records every call's input and output (the output
    keeps its gradient), so a test sees both Noise2Same passes however the method batches them.
    """

    def __init__(self, kernel: np.ndarray, scale: float = 1.0, bias: float = 0.0):
        super().__init__()
        self.kernel = np.asarray(kernel, np.float64)
        self.register_buffer("weight", torch.tensor(self.kernel, dtype=torch.float32)[None, None])
        self.scale = torch.nn.Parameter(torch.tensor(float(scale)))
        self.bias = torch.nn.Parameter(torch.tensor(float(bias)))
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x):
        c = x.shape[1]
        y = self.scale * F.conv2d(x, self.weight.expand(c, 1, 3, 3), padding=1, groups=c) + self.bias
        y.retain_grad()
        self.calls.append((x.detach().clone(), y))
        return y

    def numpy(self, x: np.ndarray) -> np.ndarray:
        """The same function in float64 numpy, for the hand computation."""
        out = np.empty(x.shape, np.float64)
        for index in np.ndindex(*x.shape[:2]):
            out[index] = ndi.correlate(x[index].astype(np.float64), self.kernel, mode="constant", cval=0.0)
        return float(self.scale.detach()) * out + float(self.bias.detach())

    def passes(self, batch: torch.Tensor):
        """(full-pass inputs, masked-pass inputs, their output gradients), each ordered like ``batch``.

        A gradient is ``None`` where that pass's output got none (or ``backward`` has not run)."""
        rows = [(x[i], None if y.grad is None else y.grad[i]) for x, y in self.calls for i in range(len(x))]
        full, masked = [], []
        for sample in batch:
            same = [r for r in rows if torch.equal(r[0], sample)]
            assert len(same) == 1, "the full pass must see each sample exactly once, unchanged"
            changed = [r for r in rows if r is not same[0] and (r[0] != sample).any(dim=0).float().mean() < 0.2]
            assert len(changed) == 1, "the masked pass must see each sample once, changed at a few pixels"
            full.append(same[0])
            masked.append(changed[0])
        return (torch.stack([r[0] for r in full]), torch.stack([r[0] for r in masked]),
                [r[1] for r in full], [r[1] for r in masked])


def _n2same_batch(seed=0, shape=(2, 2, 32, 32)):
    return torch.from_numpy(np.random.default_rng(seed).normal(size=shape).astype(np.float32))


@pytest.mark.parametrize("lambda_inv", [None, 0.5, 7.0], ids=["default", "0.5", "7"])
def test_n2same_training_loss_equals_hand_computation(lambda_inv):
    """The whole training loss (masking, both passes, both terms) with a fixed network, recomputed in numpy
    from what the network was fed: mean (f(x) - x)^2 + lambda_inv * sqrt(mean over J (f(x) - f(x_J^c))^2)."""
    options = {"mask_fraction": 0.05} | ({} if lambda_inv is None else {"lambda_inv": lambda_inv})
    method = get_method("n2same", options)
    expected_lambda = 2.0 if lambda_inv is None else lambda_inv
    assert method.options["lambda_inv"] == expected_lambda
    batch = _n2same_batch(1)
    net = _FixedConv([[0.0, 0.1, 0.0], [0.2, 0.5, 0.1], [0.0, 0.3, -0.1]], scale=1.3, bias=0.05)
    loss = method.training_loss(net, batch, _gen(3))

    full_in, masked_in, _, _ = net.passes(batch)
    x, x_masked = full_in.numpy().astype(np.float64), masked_in.numpy().astype(np.float64)
    j = (x_masked != x).any(axis=1)  # (B, Y, X): the pixels the masked pass did not see
    assert 0.02 < j.mean() < 0.1, "J should hold about mask_fraction of the pixels"
    f_full, f_masked = net.numpy(x), net.numpy(x_masked)
    reconstruction = np.mean((f_full - x) ** 2)
    invariance = np.mean(((f_full - f_masked) ** 2).transpose(0, 2, 3, 1)[j])  # over J x channels
    assert invariance > 0
    assert loss.item() == pytest.approx(reconstruction + expected_lambda * math.sqrt(invariance), rel=1e-5)


def test_lambda_inv_is_user_settable_through_the_denoiser():
    assert Denoiser("n2same").method.options["lambda_inv"] == 2.0
    model = Denoiser("n2same", method_options={"lambda_inv": 0.75})
    assert model.method.options["lambda_inv"] == 0.75


def test_n2same_gradient_reaches_both_passes():
    """With f(x) = scale * x at scale = 1 the reconstruction term and its gradient vanish, so the whole
    gradient comes from the invariance term, through the full pass and the masked pass alike."""
    lambda_inv = 2.0
    method = get_method("n2same", {"mask_fraction": 0.05, "lambda_inv": lambda_inv})
    batch = _n2same_batch(2)
    identity = np.zeros((3, 3))
    identity[1, 1] = 1.0
    net = _FixedConv(identity, scale=1.0, bias=0.0)
    loss = method.training_loss(net, batch, _gen(4))
    loss.backward()

    full_in, masked_in, full_grad, masked_grad = net.passes(batch)
    x, x_masked = full_in.double(), masked_in.double()
    j = (x_masked != x).any(dim=1, keepdim=True).expand_as(x)
    count = int(j.sum())
    rms = math.sqrt(float(((x - x_masked)[j] ** 2).mean()))
    # d/dscale of lambda * sqrt(mean_J (scale x - scale x')^2) = lambda * rms_J(x - x'): the invariance term
    # alone gives the parameter its gradient (the reconstruction part is 2 mean((scale - 1) x^2) = 0).
    assert net.scale.grad is not None
    assert float(net.scale.grad) == pytest.approx(lambda_inv * rms, rel=1e-4)
    assert abs(float(net.bias.grad)) < 1e-6

    # Per output pixel: dL/df(x) = +lambda (f(x) - f(x')) / (|J| rms) on J, dL/df(x') the opposite, 0 elsewhere.
    expected = (lambda_inv * (x - x_masked) / (count * rms)) * j
    assert all(g is not None for g in full_grad + masked_grad), "both passes must receive a gradient"
    got_full = torch.stack(full_grad).double()
    got_masked = torch.stack(masked_grad).double()
    assert (got_masked[j] != 0).all() and (got_masked[~j] == 0).all()
    torch.testing.assert_close(got_full, expected, rtol=1e-4, atol=1e-9)
    torch.testing.assert_close(got_masked, -expected, rtol=1e-4, atol=1e-9)


# ------------------------------------------------------------------ N-net noise estimation

# Small and quick: 64x64 image, 1-level U-Net with 8 features, 300 steps at a raised learning rate.
NNET_FAST = dict(patch=32, batch=8, features=8, depth=1, steps=300, steps_per_epoch=50, lr=2e-3,
                 curve_every=0, seed=0, method_options={"noise_features": 16})


def test_nnet_recovers_a_gaussian_noise_level():
    """White Gaussian noise of known sigma, in uint16-like units (scale 1000, offset 200): the predicted
    noise std is sigma in those units (a spread: scaled, never offset)."""
    sigma, scale, offset = 0.1, 1000.0, 200.0
    clean = fluorescence_image((64, 64), seed=3)
    noisy = add_noise(clean, "gaussian", sigma=sigma, seed=4) * scale + offset
    model = Denoiser("nnet", "YX", **NNET_FAST).fit(noisy)
    outputs = model.predict_outputs(noisy)
    assert set(outputs) == {"denoised", "noise_std"}
    std = outputs["noise_std"]
    assert std.shape == noisy.shape and np.isfinite(std).all() and (std > 0).all()
    estimate = float(np.median(std))
    true = sigma * scale
    assert abs(estimate - true) <= 0.15 * true, f"predicted noise std {estimate:.1f}, true {true:.1f}"


def test_nnet_noise_level_grows_with_signal_for_poisson_gaussian_noise():
    """Shot noise: std = sqrt(signal / photons + read^2) grows with the signal, and so must the prediction."""
    photons, read = 20, 0.02
    clean = fluorescence_image((64, 64), seed=5)
    noisy = add_noise(clean, "poisson_gaussian", sigma=read, photons=photons, seed=6)
    model = Denoiser("nnet", "YX", **NNET_FAST).fit(noisy)
    outputs = model.predict_outputs(noisy)
    std, signal = outputs["noise_std"], outputs["denoised"]
    assert np.isfinite(std).all() and (std > 0).all()
    low, high = np.percentile(signal, [10, 90])
    bottom, top = float(np.median(std[signal <= low])), float(np.median(std[signal >= high]))
    true_std = np.sqrt(clean / photons + read**2)
    true_ratio = float(np.median(true_std[signal >= high]) / np.median(true_std[signal <= low]))
    assert true_ratio > 2  # the image has enough contrast for the check to mean something
    assert top > 1.5 * bottom, f"top-decile std {top:.4f} vs bottom-decile std {bottom:.4f}"
    rho = spearmanr(true_std.ravel(), std.ravel())[0]
    assert rho > 0.5, f"Spearman correlation with the true per-pixel std is {rho:.2f}"


# -------------------------------------------------------------- mixture validity, extremes

EXTREME_INPUTS = {
    "zeros": lambda shape: torch.zeros(shape),
    "huge": lambda shape: torch.full(shape, 1e6),
    "huge_negative": lambda shape: torch.full(shape, -1e6),
    "constant": lambda shape: torch.full(shape, 0.37),
    "alternating_huge": lambda shape: 1e6 * (-1.0) ** torch.arange(int(np.prod(shape))).reshape(shape),
    "mixed": lambda shape: torch.from_numpy(
        np.random.default_rng(0).choice([-1e6, -1.0, 0.0, 0.5, 1e6], size=shape).astype(np.float32)),
}


def _assert_valid_mixture(weights, offsets, sigmas, shape, k):
    b, c, *spatial = shape
    for p in (weights, offsets, sigmas):
        assert p.shape == (b, c, k, *spatial)
        assert torch.isfinite(p).all()
    assert (weights >= 0).all() and (weights <= 1).all()
    torch.testing.assert_close(weights.sum(dim=2), torch.ones(b, c, *spatial), rtol=0, atol=1e-5)
    assert (sigmas > 0).all()
    # Offsets are centred: the mixture's mean is the signal.
    centre = (weights * offsets).sum(dim=2)
    assert (centre.abs() <= 1e-5 * (1 + offsets.abs().amax(dim=2))).all()
    std = mixture_std(weights, offsets, sigmas)
    assert std.shape == (b, c, *spatial) and torch.isfinite(std).all() and (std > 0).all()


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_mixture_parameters_stay_valid_for_extreme_inputs(k, dims):
    torch.manual_seed(k)
    head = NoiseHead(channels=2, dims=dims, mixture=k, features=16)
    shape = (2, 2) + (4,) * (dims - 2) + (6, 6)
    for name, make in EXTREME_INPUTS.items():
        signal = make(shape).requires_grad_(True)
        weights, offsets, sigmas = head(signal)
        _assert_valid_mixture(weights.detach(), offsets.detach(), sigmas.detach(), shape, k)
        # The NLL of an observation far from, and one equal to, the signal: finite, with finite gradients.
        for observed in (torch.zeros(shape), signal.detach()):
            head.zero_grad()
            signal.grad = None
            mask = torch.ones((shape[0], *shape[2:]), dtype=torch.bool)
            loss = mixture_nll(observed, signal, (weights, offsets, sigmas), mask)
            assert torch.isfinite(loss), f"K={k}, {name}: NLL {loss.item()}"
            loss.backward(retain_graph=True)
            assert torch.isfinite(signal.grad).all(), f"K={k}, {name}: gradient w.r.t. the signal"
            for pname, p in head.named_parameters():
                assert p.grad is not None and torch.isfinite(p.grad).all(), f"K={k}, {name}: {pname} gradient"


def _degenerate_images(size=48):
    """All-zero, constant and saturated images (uint16 and float32)."""
    clean = fluorescence_image((size, size), seed=7)
    clipped = np.clip(add_noise(clean, "gaussian", sigma=0.05, seed=8) * 2e5, 0, 65535).astype(np.uint16)
    assert (clipped == 65535).mean() > 0.05  # enough saturated pixels to move the upper percentile
    return {
        "zeros_uint16": np.zeros((size, size), np.uint16),
        "zeros_float32": np.zeros((size, size), np.float32),
        "constant_uint16": np.full((size, size), 1000, np.uint16),
        "constant_float32": np.full((size, size), 0.3, np.float32),
        "saturated_uint16": np.full((size, size), 65535, np.uint16),
        "clipped_uint16": clipped,
    }


DEGENERATE = _degenerate_images()


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("name", list(DEGENERATE))
def test_nnet_loss_and_gradients_finite_on_degenerate_images(name, k):
    """The N-net training loss on raw (unnormalised: up to 65535) and on normalised patches."""
    method = get_method("nnet", {"mixture": k, "noise_features": 8})
    torch.manual_seed(0)
    net = NNet(in_channels=1, dims=2, depth=1, features=8, mixture=k, noise_features=8)
    image = DEGENERATE[name].astype(np.float32)
    normalised = Normalization.fit(image[None, None], method.preferred_normalization).apply(image[None, None])
    for batch in (image[None, None], normalised):
        batch = torch.from_numpy(np.ascontiguousarray(np.repeat(batch[..., :32, :32], 2, axis=0)))
        net.zero_grad()
        loss = method.training_loss(net, batch, _gen(k))
        assert torch.isfinite(loss), f"{name}, K={k}: loss {loss.item()}"
        loss.backward()
        for pname, p in net.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), f"{name}, K={k}: {pname} gradient"
        with torch.no_grad():
            _assert_valid_mixture(*net(batch)[1], batch.shape, k)


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("name", list(DEGENERATE))
def test_nnet_trains_on_degenerate_images(name, k):
    """A short full run (validation and noise curves included) never produces NaN: losses, weights and
    both outputs stay finite, and the predicted noise std stays positive."""
    image = DEGENERATE[name]
    model = Denoiser("nnet", "YX", patch=16, batch=4, features=8, depth=1, steps=20, steps_per_epoch=10,
                     curve_every=10, method_options={"mixture": k, "noise_features": 8})
    events = list(model.train(image))
    assert events[-1].done and events[-1].step == 20
    assert all(math.isfinite(e.train_loss) for e in events)
    val_losses = [e.val_loss for e in events if e.val_loss is not None]
    assert val_losses and all(math.isfinite(v) for v in val_losses)
    assert model.state.best_val_loss is not None and math.isfinite(model.state.best_val_loss)
    for curve in (e.extra["noise_curve"] for e in events if "noise_curve" in e.extra):
        assert np.isfinite(curve.std).all() and np.isfinite(curve.predicted_std).all()
    for pname, p in model.network.named_parameters():
        assert torch.isfinite(p).all(), f"{name}, K={k}: parameter {pname} is not finite"
    outputs = model.predict_outputs(image)
    assert np.isfinite(outputs["denoised"]).all()
    std = outputs["noise_std"]
    assert std.shape == image.shape and np.isfinite(std).all() and (std > 0).all()


# ------------------------------------------------------------------ N-net's blind-spot error term
def test_squared_gradient_of_ramps_and_constants():
    from napari_selfdenoise.core.nn.networks import squared_gradient

    y, x = torch.meshgrid(torch.arange(8.0), torch.arange(10.0), indexing="ij")
    ramp = (3 * x - 2 * y)[None, None]
    inner = squared_gradient(ramp)[..., 1:-1, 1:-1]
    assert torch.allclose(inner, torch.full_like(inner, 13.0))  # 3^2 + 2^2 away from the edges
    assert (squared_gradient(torch.full((1, 2, 4, 5, 6), 7.0)) == 0).all()  # 3-D, constant
    volume = torch.arange(5.0).reshape(1, 1, 5, 1, 1).expand(1, 1, 5, 4, 4)  # slope 1 along Z only
    assert torch.allclose(squared_gradient(volume)[:, :, 1:-1], torch.ones(1, 1, 3, 4, 4))


def test_structure_term_widens_only_where_the_signal_has_structure_and_only_in_training():
    torch.manual_seed(0)
    net = NNet(in_channels=1, dims=2, depth=1, features=8, noise_features=8, structure=True)
    flat = torch.full((1, 1, 16, 16), 0.4)
    edge = flat.clone()
    edge[..., 8:] = 0.9
    for signal, widened in ((flat, False), (edge, True)):
        params = net.noise(signal)
        _, _, sigmas = net.noise.widen_by_structure(params, signal)
        if widened:
            assert (sigmas[..., 7:9] > params[2][..., 7:9] * 1.001).all()  # at the edge
            assert torch.equal(sigmas[..., :6], params[2][..., :6])  # away from it
        else:
            assert torch.equal(sigmas, params[2])
    # The prediction (the noise-std map a user gets) never includes the term, whatever its weight.
    method = get_method("nnet", {"structure": True, "noise_features": 8})
    x = torch.rand(1, 1, 16, 16)
    with torch.no_grad():
        before = method.predict(net, x)
        net.noise.structure_logit.fill_(5.0)
        assert torch.equal(method.predict(net, x), before)
    # ... and it is learned: its weight receives a gradient from the training loss.
    loss = method.training_loss(net, torch.rand(2, 1, 16, 16), _gen())
    loss.backward()
    assert net.noise.structure_logit.grad is not None and net.noise.structure_logit.grad.abs().sum() > 0


def test_structure_option_round_trips_and_old_models_load_without_it(tmp_path):
    image = add_noise(fluorescence_image((48, 48), seed=3), "gaussian", sigma=0.1, seed=4)
    model = Denoiser("nnet", "YX", patch=16, batch=2, features=8, depth=1, steps=3,
                     method_options={"structure": True, "noise_features": 8}).fit(image)
    loaded = Denoiser.load(model.save(tmp_path / "m.sdmodel"))
    assert loaded.architecture["structure"] is True
    assert torch.equal(loaded.network.noise.structure_logit, model.network.noise.structure_logit)
    np.testing.assert_allclose(loaded.predict(image), model.predict(image), atol=1e-6)
    old = {k: v for k, v in model.architecture.items() if k != "structure"}  # saved before the option existed
    from napari_selfdenoise.core.nn.networks import build_network

    assert build_network(old).noise.structure_logit is None


# ------------------------------------------------------------------ N-net noise calibration


class _BoxBlur(torch.nn.Module):
    """A fixed D-net: the 3x3 mean. Its blind-spot predictions err by a known amount (averaged noise of
    the neighbours, and the signal's edges), which the joint likelihood mistakes for noise."""

    def forward(self, x):
        return F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), 3, stride=1)


def _smooth_image(size=64, seed=0):
    field = ndi.gaussian_filter(np.random.default_rng(seed).normal(size=(size, size)), 6, mode="wrap")
    return (0.1 + 0.9 * (field - field.min()) / (field.max() - field.min())).astype(np.float32)


@pytest.mark.parametrize("noise", ["constant", "signal_dependent"])
def test_noise_calibration_removes_the_blind_spot_error_from_the_noise_model(noise):
    """Piecewise-constant signal, Gaussian noise of known std; the D-net is a fixed blur. A head fitted to
    the hidden pixels' likelihood, as training does, over-estimates the noise; after calibration its std
    is the noise's own, at every signal level."""
    from napari_selfdenoise.core.methods.nnet import calibrate_noise_head, direct_neighbour_mean

    clean = np.stack([_smooth_image(seed=s) for s in range(8)])[:, None]  # 8 patches (8, 1, 64, 64)
    sigma = np.full_like(clean, 0.05) if noise == "constant" else 0.02 + 0.08 * clean
    noisy = torch.from_numpy(clean + sigma * np.random.default_rng(1).normal(size=clean.shape).astype(np.float32))
    torch.manual_seed(0)
    net = NNet(in_channels=1, dims=2, depth=1, features=8, noise_features=16)
    net.denoiser = _BoxBlur()
    levels = np.digitize(clean, np.linspace(0.2, 0.9, 8))  # 0.1-0.2, ..., 0.9-1.0

    def level_errors():  # relative error of the predicted std at each signal level: median, worst
        with torch.no_grad():
            predicted = mixture_std(*net.noise(net.denoiser(noisy))).numpy()
        errors = [abs(float(np.mean(predicted[levels == k]) / np.mean(sigma[levels == k])) - 1)
                  for k in np.unique(levels)]
        return float(np.median(errors)), max(errors)

    # What training fits: each grid pixel hidden (direct-neighbour mean) and predicted from the rest.
    mask = torch.zeros(noisy.shape[:1] + noisy.shape[2:], dtype=torch.bool)
    mask[:, ::4, ::4] = True
    with torch.no_grad():
        signal = net.denoiser(torch.where(mask[:, None], direct_neighbour_mean(noisy), noisy))
    optimizer = torch.optim.Adam(net.noise.parameters(), lr=1e-2)
    for _ in range(400):
        optimizer.zero_grad()
        mixture_nll(noisy, signal, net.noise(signal), mask).backward()
        optimizer.step()
    trained = level_errors()
    assert trained[0] > 0.06, f"the test must make the blind-spot error visible (median {trained[0]:.1%})"

    note = calibrate_noise_head(net, noisy, _gen(2))
    assert "calibrated" in note
    calibrated = level_errors()
    assert calibrated[0] < 0.05 and calibrated[1] < 0.08, \
        f"after calibration the std is off by {calibrated[0]:.1%} (median level), {calibrated[1]:.1%} (worst); " \
        f"trained head: {trained[0]:.1%}, {trained[1]:.1%}"


def test_calibration_runs_when_training_ends_and_only_changes_the_noise_head():
    image = add_noise(fluorescence_image((64, 64), seed=3), "gaussian", sigma=0.1, seed=4)
    fits = {}
    for calibrate in (False, True):
        options = {**NNET_FAST, "steps": 20, "method_options": {"noise_features": 16, "calibrate": calibrate}}
        model = Denoiser("nnet", "YX", **options)
        events = list(model.train(image))
        # (announcements: the stage's progress events carry "stage_progress" as well)
        stages = [e.extra["stage"] for e in events if "stage" in e.extra and "stage_progress" not in e.extra]
        # Calibrating is announced once, after the last step and before the final (done) event.
        assert stages == (["calibrating the noise model"] if calibrate else [])
        assert [e.done for e in events].count(True) == 1 and events[-1].done
        if calibrate:
            assert "stage" in events[-2].extra and events[-2].step == events[-1].step == 20
        assert model.state.elapsed == pytest.approx(events[-1].elapsed)
        fits[calibrate] = (model.network.state_dict(), events[-1].extra.get("notes", []))
    (plain, plain_notes), (calibrated, notes) = fits[False], fits[True]
    assert plain_notes == [] and any("calibrated" in n for n in notes)
    for key in plain:  # same seed, same training: only the noise head differs
        same = torch.equal(plain[key], calibrated[key])
        assert same == (not key.startswith("noise.")), key


def test_nnet_options_are_checked_and_calibrate_false_has_no_finishing_step():
    for bad, message in (({"mixture": 4}, "mixture"), ({"grid_min": 5, "grid_max": 3}, "grid_min"),
                         ({"noise_lr": 0}, "noise_lr"), ({"blind_radius": 9}, "blind_radius")):
        with pytest.raises(SelfDenoiseError, match=message):
            get_method("nnet", bad)
    assert get_method("nnet").finishing == "calibrating the noise model"
    assert get_method("nnet", {"calibrate": False}).finishing is None


# ------------------------------------------------------------------ N-net posterior (MMSE) inference


class _FixedNoise(torch.nn.Module):
    """A noise head with a known answer: one Gaussian of std ``a + b * signal`` (b = 0: constant)."""

    def __init__(self, a, b=0.0):
        super().__init__()
        self.a, self.b = a, b

    def forward(self, signal):
        ones = torch.ones_like(signal).unsqueeze(2)
        return ones, 0 * ones, (self.a + self.b * signal.clamp_min(0)).unsqueeze(2)


def _prior_and_observation(seed=0, shape=(2, 1, 16, 16)):
    g = _gen(seed)
    prior = torch.rand(shape, generator=g)
    variance = 0.001 + 0.2 * torch.rand(shape, generator=g)
    observed = prior + 0.6 * torch.randn(shape, generator=g)  # some pixels far from their prior
    return prior, variance, observed


def test_posterior_mean_equals_the_closed_form_for_gaussian_noise():
    """Gaussian prior N(mu, s^2), Gaussian noise of constant std sigma: E[x | y] = (mu sigma^2 + y s^2) /
    (sigma^2 + s^2). The grid integral must give it, also for pixels many prior stds from their prior."""
    from napari_selfdenoise.core.methods.nnet import posterior_mean

    sigma = 0.3
    prior, variance, observed = _prior_and_observation()
    got = posterior_mean(observed, prior, variance, _FixedNoise(sigma))
    expected = (prior * sigma**2 + observed * variance) / (sigma**2 + variance)
    assert ((observed - prior).abs() > 4 * variance.sqrt()).any()
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_posterior_mean_matches_a_dense_integral_for_signal_dependent_noise():
    """Noise std a + b x (a Poisson-like curve), skewing the posterior: no closed form; the grid matches a
    20 001-point integral over the prior's whole range."""
    from napari_selfdenoise.core.methods.nnet import posterior_mean

    head = _FixedNoise(0.05, 0.4)
    prior, variance, _ = _prior_and_observation(1)
    g = _gen(2)  # signal drawn from the prior, observation from the noise model around it
    signal = prior + variance.sqrt() * torch.randn(prior.shape, generator=g)
    observed = signal + (0.05 + 0.4 * signal.clamp_min(0)) * torch.randn(prior.shape, generator=g)
    got = posterior_mean(observed, prior, variance, head).double()
    mu, v, y = (t.double().reshape(-1, 1) for t in (prior, variance, observed))
    x = mu + v.sqrt() * torch.linspace(-8, 8, 20001, dtype=torch.float64)  # (pixels, points)
    std = 0.05 + 0.4 * x.clamp_min(0)
    log_w = -0.5 * (x - mu) ** 2 / v - torch.log(std) - 0.5 * ((y - x) / std) ** 2
    w = torch.softmax(log_w, dim=1)
    expected = (w * x).sum(dim=1).reshape(got.shape)
    plain_gaussian = (prior * 0.05**2 + observed * variance) / (0.05**2 + variance)
    assert (plain_gaussian.double() - expected).abs().max() > 0.02  # the noise's signal dependence matters
    error = (got - expected).abs()
    assert float(error.mean()) < 1e-3 and bool((error < 0.05 * variance.sqrt() + 1e-3).all()), \
        (float(error.mean()), float(error.max()))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_prior_variance_is_right_at_edges_where_the_prior_errs(seed):
    """A blurred prior errs at edges. The estimated error variance there (the steepest tenth of the
    prior) must match the true one, and the posterior must beat both the prior and the observation."""
    from napari_selfdenoise.core.methods.nnet import posterior_mean, prior_variance
    from napari_selfdenoise.core.nn.networks import squared_gradient

    rng = np.random.default_rng(seed)
    clean = fluorescence_image((256, 256), seed=seed).astype(np.float32)
    blurred = ndi.gaussian_filter(clean, 1.2) + 0.02 * rng.standard_normal(clean.shape)
    noisy = clean + 0.1 * rng.standard_normal(clean.shape)
    clean, prior, observed = (torch.from_numpy(np.asarray(a, np.float32))[None, None]
                              for a in (clean, blurred, noisy))
    head = _FixedNoise(0.1)
    variance = prior_variance(observed, prior, head)
    slope = squared_gradient(prior)
    edges = slope > torch.quantile(slope.flatten(), 0.9)
    ratio = float(variance[edges].mean() / ((clean - prior) ** 2)[edges].mean())
    assert 0.85 < ratio < 1.2, ratio
    mse = lambda t: float(((t - clean) ** 2).mean())
    assert mse(posterior_mean(observed, prior, variance, head)) < 0.9 * mse(prior) < mse(observed)


def test_posterior_option_is_stored_and_old_model_files_keep_their_plain_prediction(tmp_path):
    """The posterior is off by default; turned on, it is stored in the model file and used after loading;
    files made before the option existed do not list it and keep predicting with the network alone."""
    from pathlib import Path

    assert get_method("nnet").options["posterior"] is False
    image = add_noise(fluorescence_image((48, 48), seed=3), "gaussian", sigma=0.1, seed=4)
    model = Denoiser("nnet", "YX", patch=16, batch=2, features=8, depth=1, steps=3,
                     method_options={"noise_features": 8, "calibrate": False, "posterior": True}).fit(image)
    assert model.config.method_options["posterior"] is True
    loaded = Denoiser.load(model.save(tmp_path / "m.sdmodel"))
    assert loaded.method.options["posterior"] is True
    np.testing.assert_allclose(loaded.predict(image), model.predict(image), atol=1e-6)
    off = Denoiser("nnet", "YX", patch=16, batch=2, features=8, depth=1, steps=3,
                   method_options={"noise_features": 8, "calibrate": False, "posterior": False}).fit(image)
    assert not np.allclose(off.predict(image), model.predict(image))  # same seed, same weights
    old = Denoiser.load(Path(__file__).resolve().parents[2] / "data" / "compat-0.1.0-nnet.sdmodel")
    assert old.method.options["posterior"] is False
