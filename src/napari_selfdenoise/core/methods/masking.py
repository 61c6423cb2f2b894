"""Blind-spot masks and the replacement values put at masked pixels, shared by all methods.

Masks are boolean (B, [Z,] Y, X) tensors: one position masks every channel, so correlated channels
cannot leak the hidden value. Everything runs on the batch's device; randomness comes from ``gen``.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
import torch.nn.functional as F


def _rand_int(high: int, size, gen: torch.Generator) -> torch.Tensor:
    return torch.randint(0, high, size, generator=gen)


def grid_mask(shape, spacing: int, gen: torch.Generator, device=None) -> torch.Tensor:
    """Noise2Self's J: one random phase of a ``spacing``-periodic grid, drawn per sample."""
    batch, *spatial = shape
    phases = _rand_int(spacing, (batch, len(spatial)), gen).numpy()
    mask = np.ones(shape, dtype=bool)  # numpy: tiny ops here cost less than torch's dispatch
    for axis, size in enumerate(spatial):
        on_grid = (np.arange(size)[None, :] - phases[:, axis : axis + 1]) % spacing == 0  # (B, size)
        view = [batch] + [1] * len(spatial)
        view[axis + 1] = size
        mask &= on_grid.reshape(view)
    return torch.from_numpy(mask).to(device)


def phase_grid_mask(x: torch.Tensor, phase, spacing: int) -> torch.Tensor:
    """(B, [Z,] Y, X) mask of the ``spacing``-periodic grid at ``phase`` (one offset per spatial axis),
    the same for every sample of ``x``: J of one pass of J-invariant inference or calibration."""
    mask = torch.ones((1, *x.shape[2:]), dtype=torch.bool, device=x.device)
    for axis, offset in enumerate(phase):
        coord = torch.arange(x.shape[2 + axis], device=x.device)
        view = [1] * (x.dim() - 1)
        view[1 + axis] = x.shape[2 + axis]
        mask = mask & ((coord - int(offset)) % spacing == 0).reshape(view)
    return mask.expand(x.shape[0], *x.shape[2:])


def stratified_mask(shape, fraction: float, gen: torch.Generator, device=None) -> torch.Tensor:
    """Noise2Void's blind spots: one random pixel in each box holding ``1 / fraction`` pixels."""
    batch, *spatial = shape
    box = max(1, round((1.0 / fraction) ** (1.0 / len(spatial))))
    counts = [-(-size // box) for size in spatial]  # ceil
    grids = torch.meshgrid(*[torch.arange(c) * box for c in counts], indexing="ij")
    starts = torch.stack([g.reshape(-1) for g in grids], dim=1)  # (boxes, dims)
    offsets = _rand_int(box, (batch, starts.shape[0], len(spatial)), gen)
    coords = starts[None] + offsets  # (B, boxes, dims)
    inside = (coords < torch.tensor(spatial)).all(dim=-1)
    mask = torch.zeros(shape, dtype=torch.bool)
    b = torch.arange(batch)[:, None].expand_as(inside)
    mask[(b[inside], *coords[inside].unbind(-1))] = True
    return mask.to(device)


def donut_mean(x: torch.Tensor, diagonals: bool = True) -> torch.Tensor:
    """Each pixel replaced by a weighted mean of its 3^d neighbours, itself excluded (reflect padding).

    Direct neighbours weigh 1, diagonal ones 0.5 (0.25 for 3-D corners); ``diagonals=False`` keeps the
    2*d direct neighbours only (N-net's replacement). Shifted slices instead of a
    depthwise convolution: about 3x faster on the CPU for training-sized batches.
    """
    dims = x.dim() - 2
    # Reflect, never replicate: replicate padding makes a border pixel its own neighbour (a leak).
    padded = F.pad(x, (1, 1) * dims, mode="reflect" if min(x.shape[2:]) > 1 else "replicate")
    size = x.shape[2:]
    total, weight_sum = torch.zeros_like(x), 0.0
    for offset in itertools.product((-1, 0, 1), repeat=dims):
        distance = sum(map(abs, offset))
        if distance == 0 or (distance > 1 and not diagonals):
            continue
        weight = 0.5 ** (distance - 1)
        window = tuple(slice(1 + o, 1 + o + n) for o, n in zip(offset, size))
        total += weight * padded[(Ellipsis, *window)]
        weight_sum += weight
    return total / weight_sum


def replace_with_donut_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask[:, None], donut_mean(x), x)


def _neighbour_offsets(dims: int, radius: int) -> torch.Tensor:
    offsets = [o for o in itertools.product(range(-radius, radius + 1), repeat=dims) if any(o)]
    return torch.tensor(offsets)


def _mirror(coords: torch.Tensor, offsets: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """``coords + offsets`` mirrored into range (reflect: -1 -> 1). Where that lands on the pixel itself
    (offset -2 at index 1, +2 at size - 2), the opposite offset is taken: a blind spot never sees itself."""

    def reflect(p):
        p = p.abs()
        return torch.where(p >= sizes, 2 * (sizes - 1) - p, p)

    picked = reflect(coords + offsets)
    itself = (picked == coords).all(dim=-1, keepdim=True)
    return torch.where(itself, reflect(coords - offsets), picked)


def _gather_neighbours(x: torch.Tensor, mask: torch.Tensor, offsets: torch.Tensor):
    """Values of each masked pixel's neighbours at ``offsets``: (n_masked, C, n_offsets), mirrored at borders,
    and whether each neighbour is masked too: (n_masked, n_offsets)."""
    index = mask.nonzero()  # (n, 1 + dims)
    b, coords = index[:, 0], index[:, 1:]
    sizes = torch.tensor(mask.shape[1:], device=x.device)
    neighbours = _mirror(coords[:, None, :], offsets.to(x.device)[None], sizes)  # (n, k, dims)
    k = offsets.shape[0]
    at = (b[:, None].expand(-1, k), *neighbours.unbind(-1))
    values = x[(at[0], slice(None), *at[1:])]
    # Advanced indices first, then the channel slice: (n, k, C) -> (n, C, k).
    return index, values.permute(0, 2, 1), mask[at]


def replace_with_random_neighbour(x, mask, gen: torch.Generator, radius: int = 2) -> torch.Tensor:
    """N2V: each masked pixel takes the value of one random pixel of its (2r+1)^d window, not itself."""
    offsets = _neighbour_offsets(x.dim() - 2, radius)
    n = int(mask.sum())
    choice = offsets[_rand_int(offsets.shape[0], (n,), gen)]  # (n, dims)
    index = mask.nonzero()
    b, coords = index[:, 0], index[:, 1:]
    sizes = torch.tensor(mask.shape[1:], device=x.device)
    picked = _mirror(coords, choice.to(x.device), sizes)
    out = x.clone()
    out[(b, slice(None), *coords.unbind(-1))] = x[(b, slice(None), *picked.unbind(-1))]
    return out


def replace_with_neighbour_median(x, mask, radius: int = 2, visible_only: bool = False) -> torch.Tensor:
    """N2V2: each masked pixel takes the median of its (2r+1)^d window without itself.

    ``visible_only``: without the other masked pixels of the window too. With dense masks a neighbour's
    replacement would otherwise be a median that holds the pixel's own noisy value, which lets the network
    learn a little of the identity; a pixel whose neighbours are all masked takes the median of them all.
    """
    index, values, hidden = _gather_neighbours(x, mask, _neighbour_offsets(x.dim() - 2, radius))
    b, coords = index[:, 0], index[:, 1:]
    out = x.clone()
    k = values.shape[-1]
    if visible_only:
        hidden = hidden & ~hidden.all(dim=-1, keepdim=True)
        # Hidden neighbours sort last (+inf); the median is taken over the visible count.
        values = values.masked_fill(hidden[:, None], float("inf"))
        count = (k - hidden.sum(dim=-1))[:, None, None].expand(-1, values.shape[1], 1)
    else:
        count = torch.full((values.shape[0], values.shape[1], 1), k, device=x.device)
    # The true median (mean of the two middle values for an even count, like numpy); torch's
    # ``median`` would return the lower one.
    ordered = values.sort(dim=-1).values
    middle = ordered.gather(-1, (count - 1) // 2) + ordered.gather(-1, count // 2)
    out[(b, slice(None), *coords.unbind(-1))] = (middle[..., 0] / 2).to(x.dtype)
    return out


def widen_blind_spots(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """``mask`` (B, [Z,] Y, X) grown by ``radius`` pixels along Y and X (a square around each blind spot).

    Z is left alone: the planes of a stack are separate exposures, so a camera's correlated noise (from
    resampling, demosaicing, binning) links neighbours within a plane only.
    """
    if radius <= 0:
        return mask
    size = 2 * radius + 1
    window = (1, size, size) if mask.dim() == 4 else (size, size)
    pool = F.max_pool3d if mask.dim() == 4 else F.max_pool2d
    padding = tuple(w // 2 for w in window)
    return pool(mask[:, None].float(), window, stride=1, padding=padding)[:, 0] > 0


def replace_with_visible_mean(x: torch.Tensor, hidden: torch.Tensor, radius: int) -> torch.Tensor:
    """Each ``hidden`` pixel replaced by the mean of the visible pixels of its Y-X window of side
    2 * radius + 3 (at least the ring just outside a hidden square); the batch's mean where none is."""
    visible = (~hidden)[:, None].to(x.dtype)
    size = 2 * radius + 3
    window = (1, size, size) if x.dim() == 5 else (size, size)
    pad = (size // 2,) * 4 + ((0, 0) if x.dim() == 5 else ())
    pool = F.avg_pool3d if x.dim() == 5 else F.avg_pool2d
    mode = "reflect" if min(x.shape[-2:]) > size // 2 else "replicate"
    total = pool(F.pad(x * visible, pad, mode=mode), window, stride=1)
    count = pool(F.pad(visible.expand_as(x), pad, mode=mode), window, stride=1)
    fallback = (x * visible).sum() / visible.expand_as(x).sum().clamp_min(1)
    mean = torch.where(count > 0, total / count.clamp_min(1e-12), fallback)
    return torch.where(hidden[:, None], mean, x)


def hide_blind_spots(x, mask, radius: int, replace) -> torch.Tensor:
    """The network's training input: ``replace(x, mask)``, the method's own replacement, for independent
    noise (``radius`` 0). For noise correlated between neighbouring pixels (option ``blind_radius``), the
    pixels within ``radius`` of each blind spot would give its noise away: they are hidden too, and all
    hidden pixels take the mean of the visible ones around them. The loss stays on ``mask``."""
    if radius <= 0:
        return replace(x, mask)
    return replace_with_visible_mean(x, widen_blind_spots(mask, radius), radius)


def masked_mse(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the masked positions (all channels)."""
    weights = mask[:, None].to(prediction.dtype)
    squared = (prediction.float() - target.float()) ** 2 * weights
    return squared.sum() / (weights.sum() * prediction.shape[1]).clamp_min(1)
