"""N-net (Ollion et al. 2021, "Joint self-supervised blind denoising and noise estimation").

A denoiser D-net and a noise network N-net are trained together from the start: N-net maps D-net's
signal estimate to a per-pixel noise distribution (a Gaussian, or a mixture of K Gaussians for skewed real
noise), and the loss is the negative log-likelihood of the hidden (masked) observations under it.
Masking: a random grid (spacing 3-5, random phase) per step, masked pixels replaced by the mean of their
direct neighbours. Outputs: the denoised image and a per-pixel noise-std map.
The noise head learns at ``noise_lr`` times the learning rate (default 10): at the D-net's rate it stays
far too flat within a training budget (B3 in BENCHMARKS.md, speckle noise: 14-27 % error at 1x, 6-9 % at
10x), because its few weights must turn a narrow band of normalised signal into a steep std curve.

Calibration (option ``calibrate``, on by default): the likelihood sees the hidden pixel's residual, which
is the noise *plus* the blind-spot prediction's own error, so the jointly trained head over-estimates the
noise where that error is large (bright, structured signal: 9 % too high on speckle noise in B3). When
training ends, ``finish`` estimates that error per pixel by a parametric bootstrap (new noise drawn from
the learned model around the denoised signal, blind-spot predictions of it, their squared error to that
signal) and refits the head with each hidden pixel's likelihood widened by it, so the head describes the
noise alone.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import SelfDenoiseError
from ..nn.networks import mixture_std, squared_gradient
from ..steps import drain
from .base import Method
from .blind_radius import grid_spacing
from .masking import donut_mean, grid_mask, hide_blind_spots, phase_grid_mask
from .options import BLIND_RADIUS, Citation, Option


class NoiseModelNet(Method):
    name = "nnet"
    title = "N-net (joint denoising and noise estimation)"
    summary = "N-net: denoising + a learned noise model (Ollion et al. 2021)"
    citation = Citation("Ollion J., Ollion C., Gassiat E., Lehéricy L. & Le Corff S. Joint self-supervised blind "
                        "denoising and noise estimation. arXiv:2102.08023, 2021.", "10.48550/arXiv.2102.08023")
    outputs = ("denoised", "noise_std")
    finishing = "calibrating the noise model"
    finishing_steps = 60  # measured: 256^2 Gaussian noise, CPU, 64^2 patches, batch 16 (bootstrap ~12, refit ~48)
    option_specs = (
        Option("mixture", 1, low=1, high=3, label="noise mixture K",
               help="Gaussians in the noise model (1: one Gaussian; 2-3 for skewed real noise)"),
        Option("grid_min", 3, low=2, help="smallest spacing of the random grid of masked pixels"),
        Option("grid_max", 5, low=2, help="largest spacing of the random grid of masked pixels"),
        Option("noise_features", 32, low=1, help="channels of the noise head"),
        Option("noise_lr", 10.0, low=0, low_open=True, help="learning rate of the noise head, times the D-net's"),
        Option("structure", False, help="add a learned term for the blind-spot error to the noise model "
                                        "(training only)"),
        Option("calibrate", True, help="calibrate the noise model when training ends (false: keep the "
                                       "jointly trained one)"),
        BLIND_RADIUS,
        Option("posterior", False, help="predict the posterior mean of the signal under the noise model"),
    )
    # posterior: off by default. On B1 it gains +0.09 dB over the plain prediction for 12.6x the prediction
    # time (3^d blind-spot passes); its ceiling there, with the true local error variance, is +0.32 dB,
    # because the blind-spot prior is 1.3 dB worse than the plain output (BENCHMARKS.md, "Posterior").
    # Model files from before ``posterior`` existed predicted with the network alone: they keep doing so.
    legacy_defaults = {"posterior": False}

    def __init__(self, options=None):
        super().__init__(options)
        if not int(self.options["grid_min"]) <= int(self.options["grid_max"]):
            raise SelfDenoiseError("nnet options need 2 <= grid_min <= grid_max")
        if not self.options["calibrate"]:
            self.finishing = None

    def architecture(self, channels, dims, depth, features):
        return {"kind": "nnet", "in_channels": channels, "out_channels": channels * len(self.outputs),
                "dims": dims, "depth": depth, "features": features, "n2v2": False,
                "mixture": int(self.options["mixture"]), "noise_features": int(self.options["noise_features"]),
                "structure": bool(self.options["structure"])}

    def parameter_groups(self, net, lr):
        """D-net at ``lr`` (the first group, whose rate the front ends show), noise head at ``noise_lr * lr``."""
        return [{"params": list(net.denoiser.parameters()), "lr": lr},
                {"params": list(net.noise.parameters()), "lr": lr * float(self.options["noise_lr"])}]

    def training_loss(self, net, batch, gen):
        radius = self.options["blind_radius"]
        low = grid_spacing(self.options["grid_min"], radius)
        high = max(int(self.options["grid_max"]), low)
        spacing = int(torch.randint(low, high + 1, (1,), generator=gen))
        mask = grid_mask((batch.shape[0], *batch.shape[2:]), spacing, gen, batch.device)
        signal, params = net(hide_blind_spots(batch, mask, radius, replace_with_direct_neighbour_mean))
        head = getattr(net, "module", net).noise  # net may be the DistributedDataParallel wrapper
        return mixture_nll(batch, signal, head.widen_by_structure(params, signal), mask)

    def finish(self, net, patches, gen, time_left=None):
        """Calibrate the noise head (see the module's text) on ``patches``, within ``time_left()`` seconds
        when given; a step generator that returns a note."""
        return (yield from calibration_steps(net, patches, gen, self.options["blind_radius"], time_left=time_left))

    def predict(self, net, x):
        signal, params = net(x)
        if self.options["posterior"]:
            net = getattr(net, "module", net)
            prior = invariant_signal(net, x, grid_spacing(POSTERIOR_SPACING, self.options["blind_radius"]),
                                     self.options["blind_radius"])
            signal = posterior_mean(x, prior, prior_variance(x, prior, net.noise), net.noise)
        return torch.cat([signal, mixture_std(*params)], dim=1)

    def denormalize_output(self, name, values, normalization):
        if name == "noise_std":  # a spread: scale only, no offset
            scale = np.asarray(normalization.scale, np.float32).reshape((1, -1) + (1,) * (values.ndim - 2))
            return np.asarray(values, np.float32) * scale
        return normalization.invert(values)


def replace_with_direct_neighbour_mean(x, mask):
    return torch.where(mask[:, None], direct_neighbour_mean(x), x)


def direct_neighbour_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of the 2*d direct neighbours (4 in 2-D, 6 in 3-D), mirrored at the borders."""
    return donut_mean(x, diagonals=False)


def mixture_log_density(observed, signal, params) -> torch.Tensor:
    """log p(observed | signal) per pixel and channel, (B, C, ...), under the predicted mixture."""
    weights, offsets, sigmas = (p.float() for p in params)
    residual = (observed.float() - signal.float()).unsqueeze(2) - offsets  # (B, C, K, ...)
    log_components = (torch.log(weights.clamp_min(1e-12)) - torch.log(sigmas)
                      - 0.5 * math.log(2 * math.pi) - 0.5 * (residual / sigmas) ** 2)
    return torch.logsumexp(log_components, dim=2)


def mixture_nll(observed, signal, params, mask) -> torch.Tensor:
    """Mean negative log-likelihood of ``observed`` at masked pixels under the predicted mixture."""
    nll = -mixture_log_density(observed, signal, params)
    weights_mask = mask[:, None].to(nll.dtype).expand_as(nll)
    return (nll * weights_mask).sum() / weights_mask.sum().clamp_min(1)


POSTERIOR_SPACING = 3  # blind-spot grid of the posterior's J-invariant passes: 3^d passes
POSTERIOR_POINTS = 40  # signal values per pixel the posterior integral is evaluated at ...
POSTERIOR_SPAN = 6.0  # ... spanning this many stds either side of the posterior (see posterior_mean)
PRIOR_WINDOW = 15  # the prior's variance: residuals averaged over this Y-X window ...
PRIOR_BINS = 16  # ... and over the pixels of as steep a prior (quantile bins of the tile)


def invariant_signal(net, x, spacing: int, radius: int) -> torch.Tensor:
    """D-net's J-invariant prediction: every pixel predicted with itself hidden, as in training (one pass
    per phase of a ``spacing`` grid). It does not depend on the pixel's own noisy value, so that value
    can be weighed against it as independent evidence (``posterior_mean``)."""
    dims = x.dim() - 2
    out = torch.zeros_like(x)
    for phase in torch.cartesian_prod(*[torch.arange(spacing)] * dims).reshape(-1, dims).tolist():
        mask = phase_grid_mask(x, phase, spacing)
        out = torch.where(mask[:, None], blind_spot_signal(net, x, [mask], radius)[0], out)
    return out


def local_mean(t: torch.Tensor, window: int) -> torch.Tensor:
    """Mean over a ``window`` x ``window`` Y-X neighbourhood (reflect padding; Z planes separate)."""
    pad = window // 2
    flat = t.reshape(-1, 1, *t.shape[-2:])
    mode = "reflect" if min(t.shape[-2:]) > pad else "replicate"
    mean = F.avg_pool2d(F.pad(flat, (pad,) * 4, mode=mode), window, stride=1)
    return mean.reshape(t.shape)


def prior_variance(observed, prior, head, window: int = PRIOR_WINDOW, bins: int = PRIOR_BINS) -> torch.Tensor:
    """The blind-spot prediction's error variance s^2 per pixel. The observation minus a J-invariant
    prediction is that error plus independent noise, so E[(y - mu)^2] - noise variance = s^2. One pixel's
    residual is far too noisy an estimate; the mean over its Y-X ``window`` follows the image but is still
    noisy; the mean over the pixels whose prior is as steep (``bins`` quantile bins of its squared gradient)
    is steady and high at every edge, where the error is. Their average did best (B1 and synthetic edges in
    BENCHMARKS.md: binning by signal level instead put edges with flat areas, 0.7-0.8x the true error at
    edges). Floored at 1 % of the noise variance."""
    noise_variance = mixture_std(*head(prior)) ** 2
    excess = (observed - prior) ** 2 - noise_variance
    local = local_mean(excess, window).clamp_min(0)
    steepness = local_mean(squared_gradient(prior), 3)
    alike = mean_by_level(excess, steepness, bins).clamp_min(0)
    return (local + alike) / 2 + 0.01 * noise_variance


def posterior_mean(observed, prior, variance, head, points: int = POSTERIOR_POINTS,
                   span: float = POSTERIOR_SPAN) -> torch.Tensor:
    """E[x | y]: a Gaussian prior N(``prior``, ``variance``) on the signal x times the learned likelihood
    p(y | x) (the noise head's mixture, whose shape depends on x), integrated per pixel over ``points``
    signal values. They span +- ``span`` stds of the posterior that Gaussian noise would give (closed form),
    with the head's larger std of the two at the prior mean and at the observation (signal-dependent noise),
    so a pixel far from its prior is not cut off at a grid's edge. One point at a time with a running
    log-sum: memory stays that of a few images."""
    noise_variance = torch.maximum(mixture_std(*head(prior)), mixture_std(*head(observed))) ** 2
    gain = variance / (variance + noise_variance)
    centre = prior + gain * (observed - prior)
    step = 2 * span * torch.sqrt(gain * noise_variance) / (points - 1)
    top = total = weighted = None
    for k in range(points):
        signal = centre + step * (k - (points - 1) / 2)
        log_weight = (mixture_log_density(observed, signal, head(signal))
                      - 0.5 * (signal - prior) ** 2 / variance)
        if top is None:
            top, total, weighted = log_weight, torch.ones_like(log_weight), signal.float()
            continue
        new_top = torch.maximum(top, log_weight)
        old, now = torch.exp(top - new_top), torch.exp(log_weight - new_top)
        total, weighted, top = total * old + now, weighted * old + now * signal, new_top
    return (weighted / total).to(prior.dtype)


CALIBRATION_SPACING = 4  # blind-spot grid of the calibration passes (training draws 3-5)
CALIBRATION_PHASES = 4  # grid phases used: each hides 1/16 of the pixels (2-D)
CALIBRATION_BINS = 64  # signal levels over which the bootstrap error variance is averaged
CALIBRATION_PIXELS = 32768  # hidden pixels the head is refitted on, drawn to balance the signal levels
CALIBRATION_ITERATIONS = 500


def blind_spot_signal(net, x, masks, radius: int):
    """D-net's prediction of each hidden pixel, for each of the (B, ...) ``masks``: (P, B, C, ...)."""
    out = []
    for mask in masks:
        signal, _ = net(hide_blind_spots(x, mask, radius, replace_with_direct_neighbour_mean))
        out.append(signal)
    return torch.stack(out)


def hidden_values(t, mask) -> torch.Tensor:
    """The values of (B, C, ...) ``t`` at the (B, ...) ``mask``'s pixels, as (N, C)."""
    return t.movedim(1, -1)[mask]


def sample_mixture(signal, params, gen) -> torch.Tensor:
    """One noisy image drawn from the predicted mixture around ``signal``."""
    weights, offsets, sigmas = params
    flat = weights.movedim(2, -1).reshape(-1, weights.shape[2]).float().cpu()
    component = torch.multinomial(flat, 1, generator=gen).reshape(weights.movedim(2, -1).shape[:-1])
    pick = component.to(signal.device).unsqueeze(2)
    offset, sigma = offsets.gather(2, pick).squeeze(2), sigmas.gather(2, pick).squeeze(2)
    noise = torch.randn(signal.shape, generator=gen).to(signal.device)
    return signal + offset + sigma * noise


def mean_by_level(values, key, bins: int = CALIBRATION_BINS) -> torch.Tensor:
    """Each pixel's ``values`` replaced by their mean over the pixels at its level of ``key`` (quantile bins
    per channel): the signal for the calibration, the prior's steepness for ``prior_variance``. One
    bootstrap draw per pixel is a noisy estimate of its error variance; its mean at a signal level is what
    the noise-level function must subtract there, and an unbiased one."""
    out = torch.empty_like(values)
    for c in range(values.shape[1]):
        v, s = values[:, c].reshape(-1), key[:, c].reshape(-1).contiguous()
        edges = torch.quantile(s.float(), torch.linspace(0, 1, bins + 1, device=s.device)[1:-1])
        level = torch.bucketize(s, edges)
        sums = torch.zeros(bins, dtype=v.dtype, device=v.device).index_add_(0, level, v)
        counts = torch.zeros(bins, dtype=v.dtype, device=v.device).index_add_(0, level, torch.ones_like(v))
        out[:, c] = (sums / counts.clamp_min(1))[level].reshape(out[:, c].shape)
    return out


def level_balance(signal, bins: int = 32, floor: int = 64) -> torch.Tensor:
    """Pixel weights, (N,), that give the sparse bright signal ranges more say than their pixel count,
    so the head fits the whole range and not only the background most pixels are: 1 / sqrt(count of the
    pixel's range), equal-width ranges of the channel-mean signal; counts below ``floor`` count as it."""
    level = signal.mean(dim=1).reshape(-1)
    low, high = torch.quantile(level.float(), torch.tensor([0.001, 0.999], device=level.device))
    index = ((level - low) / (high - low).clamp_min(1e-12) * bins).long().clamp(0, bins - 1)
    counts = torch.zeros(bins, device=level.device).index_add_(0, index, torch.ones_like(level))
    return counts.clamp_min(floor).rsqrt()[index]


def calibrate_noise_head(net, patches, gen, blind_radius: int = 0, chunk: int = 8, time_left=None) -> str:
    """Refit ``net.noise`` to the hidden pixels' residuals with the bootstrap error variance removed."""
    return drain(calibration_steps(net, patches, gen, blind_radius, chunk, time_left))


def calibration_steps(net, patches, gen, blind_radius: int = 0, chunk: int = 8, time_left=None):
    """``calibrate_noise_head`` as a step generator: yields ``(done, total)`` after each bootstrap chunk
    and every few refit iterations, returns the note. ``time_left`` (a function: seconds left of the time
    limit) bounds it: the bootstrap stops after the chunks that fit in BOOTSTRAP_SHARE of the time (at least
    one), the refit runs the iterations that fit in the rest (its schedule fitted to them). A calibration
    on fewer pixels and iterations is coarser but valid, and is kept only if it improves the fit like the
    full one. None (no time limit): the full calibration, exactly."""
    if time_left is not None and time_left() <= 0:
        return "no time was left for the noise calibration (time limit); the trained noise head is kept"
    dims = patches.dim() - 2
    spacing = grid_spacing(CALIBRATION_SPACING, blind_radius)
    all_phases = torch.cartesian_prod(*[torch.arange(spacing)] * dims).reshape(-1, dims)
    pick = torch.randperm(len(all_phases), generator=gen)[:CALIBRATION_PHASES]
    phases = [tuple(p.tolist()) for p in all_phases[pick]]
    chunks = [patches[start : start + chunk] for start in range(0, len(patches), chunk)]
    rows = yield from _bootstrap(net, chunks, phases, spacing, gen, blind_radius, time_left)
    # The hidden pixels as a (1, C, N, 1[, 1]) image: the head is pointwise, so their layout is free.
    as_image = lambda rows: torch.cat(rows).T.reshape(1, rows[0].shape[1], -1, *([1] * (dims - 1)))
    signal, y = as_image(rows["signal"]), as_image(rows["observed"])
    variance = mean_by_level(as_image(rows["error_variance"]), signal)
    n_hidden = signal.shape[2]
    keep = torch.multinomial(level_balance(signal).cpu(), min(CALIBRATION_PIXELS, n_hidden), generator=gen)
    keep = keep.to(signal.device)
    signal, y, variance = (t[:, :, keep] for t in (signal, y, variance))
    head = net.noise
    before = {k: v.detach().clone() for k, v in head.state_dict().items()}
    done = len(rows["signal"]) // len(phases)  # bootstrap chunks done: progress so far
    first, last, iterations = yield from _refit(head, signal, y, variance, time_left, done)
    shortened = "" if (done, iterations) == (len(chunks), CALIBRATION_ITERATIONS) else (
        f"; shortened to fit the time limit: {done}/{len(chunks)} bootstrap chunks, "
        f"{iterations}/{CALIBRATION_ITERATIONS} refit iterations")
    if not math.isfinite(last) or last > first:  # never leave the head worse than training left it
        head.load_state_dict(before)
        return f"noise calibration did not improve the fit; the trained noise head is kept{shortened}"
    with torch.no_grad():
        excess = float(torch.sqrt(variance.mean()) / mixture_std(*head(signal)).mean())
    return (f"noise model calibrated on {n_hidden} hidden pixels (blind-spot error removed: "
            f"{excess:.0%} of the noise std on average){shortened}")


BOOTSTRAP_SHARE = 0.5  # of the time left, at most, for the bootstrap under a time limit; the refit gets the rest
REFIT_FILL = 0.9  # of the time left the refit plans its iterations for (the rest: margin for a slower machine)
REPORT_EVERY = 25  # refit iterations between progress reports


def _bootstrap(net, chunks, phases, spacing, gen, blind_radius, time_left):
    """The hidden pixels of every chunk of patches: their signal (blind-spot prediction), observed value
    and bootstrap error variance, as row lists (one (N, C) tensor per chunk and phase). Yields after each
    chunk; under a time limit stops before a chunk that would end past BOOTSTRAP_SHARE of it."""
    rows = {"signal": [], "observed": [], "error_variance": []}
    total = len(chunks) + CALIBRATION_ITERATIONS
    started = None if time_left is None else time_left()
    net.eval()
    for k, x in enumerate(chunks):
        if started is not None and k:
            spent = started - time_left()
            if spent * (k + 1) / k > BOOTSTRAP_SHARE * started:  # the next chunk would end past the share
                break
        with torch.no_grad():
            masks = [phase_grid_mask(x, phase, spacing) for phase in phases]
            hidden = blind_spot_signal(net, x, masks, blind_radius)  # (P, B, C, ...)
            full, params = net(x)
            resampled = blind_spot_signal(net, sample_mixture(full, params, gen), masks, blind_radius)
            error = (resampled - full) ** 2
        for p, mask in enumerate(masks):
            rows["signal"].append(hidden_values(hidden[p], mask))
            rows["observed"].append(hidden_values(x, mask))
            rows["error_variance"].append(hidden_values(error[p], mask))
        yield k + 1, total
    return rows


def _refit(head, signal, y, variance, time_left, done: int):
    """Fit ``head`` to the hidden pixels' likelihood widened by their error ``variance`` (Adam, a cosine
    schedule). Yields progress after the ``done`` bootstrap chunks; returns the loss before, the loss
    after and the iterations run. Under a time limit the iterations are planned again after each one, from
    their mean time so far (the first ones are the slowest), and the schedule is stretched or shortened to
    end with them: it always decays, and the refit ends when the time does."""
    everywhere = torch.ones((1, *signal.shape[2:]), dtype=torch.bool, device=signal.device)

    def loss_now():
        weights, offsets, sigmas = head(signal)
        widened = torch.sqrt(sigmas**2 + variance.unsqueeze(2))
        return mixture_nll(y, signal, (weights, offsets, widened), everywhere)

    # A large, decaying step: it must also work from a head that training left far off (a short run).
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-2)
    planned = CALIBRATION_ITERATIONS
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, planned, eta_min=1e-4)
    with torch.enable_grad():  # (never around a yield: the consumer's grad mode is its own)
        first = float(loss_now().detach())
    started = None if time_left is None else time_left()
    iterations = 0
    while iterations < planned:
        with torch.enable_grad():
            optimizer.zero_grad(set_to_none=True)
            loss_now().backward()
            optimizer.step()
        iterations += 1
        if time_left is not None:
            planned = schedule.T_max = _iterations_that_fit(iterations, started, time_left())
        schedule.step()
        if iterations % REPORT_EVERY == 0 or iterations == planned:
            yield done + iterations, done + planned
    with torch.no_grad():
        last = float(loss_now())
    return first, last, iterations


def _iterations_that_fit(iterations: int, started: float, left: float) -> int:
    """The refit's iterations in all: those run, and those that fit in REFIT_FILL of the ``left`` seconds
    at their mean time since ``started`` seconds were left (at most CALIBRATION_ITERATIONS)."""
    per_iteration = max(started - left, 1e-9) / iterations
    more = max(REFIT_FILL * left / per_iteration, 0.0)
    return int(min(iterations + more, CALIBRATION_ITERATIONS))
