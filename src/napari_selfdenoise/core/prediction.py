"""Tiled prediction with overlap and smooth blending, batched tiles, optional 8x test-time augmentation.

Tiles start on the network's pooling grid and, by default, overlap by twice the receptive radius plus
a blending ramp; pixels closer than the radius to an inner tile edge get (almost) zero weight, so tiled
and whole-image results agree to float precision.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from .networks import receptive_radius
from .steps import drain

DEFAULT_TILE_2D = 512
DEFAULT_TILE_3D = (64, 128, 128)
_WEIGHT_FLOOR = 1e-6  # keeps the weight sum positive where only contaminated pixels exist (tiny tiles)


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def tile_starts(size: int, tile: int, overlap: int, multiple: int) -> list[int]:
    """Tile origins along one axis: on the pooling grid, consecutive tiles overlapping by >= ``overlap``."""
    if tile >= size:
        return [0]
    step = max(multiple, (tile - overlap) // multiple * multiple)
    count = math.ceil((size - tile) / step) + 1
    starts = [min(i * step, size - tile) for i in range(count)]
    return sorted(set(starts))


def _ramp(length: int, margin: int, blend: int, inner_left: bool, inner_right: bool) -> np.ndarray:
    """1-D weights: zero within ``margin`` of an inner edge, a sin^2 ramp over ``blend``, then one."""
    d = np.arange(length, dtype=np.float64)
    w = np.ones(length)
    ramp = lambda dist: np.sin(np.clip((dist - margin + 0.5) / max(blend, 1), 0, 1) * np.pi / 2) ** 2
    if inner_left:
        w *= ramp(d)
    if inner_right:
        w *= ramp(length - 1 - d)
    return np.maximum(w, _WEIGHT_FLOOR)


def _tta_transforms(dims: int):
    """The 8 symmetries of the YX square: (k rotations, flip) pairs."""
    return [(k, flip) for k in range(4) for flip in (False, True)]


def _apply(x: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    x = torch.rot90(x, k, dims=(-2, -1))
    return torch.flip(x, dims=(-1,)) if flip else x


def _undo(x: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    x = torch.flip(x, dims=(-1,)) if flip else x
    return torch.rot90(x, -k, dims=(-2, -1))


class TiledPredictor:
    def __init__(self, method, network, depth: int, device: torch.device, tile=None, batch_size: int = 4,
                 tta: bool = False, overlap: int | None = None):
        self.method, self.network, self.device = method, network, device
        self.multiple = 2**depth
        # Per spatial axis: a 3D U-Net that pools Z fewer times than Y/X needs a smaller Z multiple.
        self.multiples = tuple(getattr(network, "pool_multiples", ()))
        self.margin = _round_up(receptive_radius(depth), self.multiple)
        self.blend = self.multiple * 4
        self.overlap = overlap
        self.tile, self.batch_size, self.tta = tile, max(1, batch_size), tta
        self.memory_format = torch.channels_last if device.type == "cpu" and network.dims == 2 \
            else torch.contiguous_format

    def _tile_shape(self, padded: tuple[int, ...], multiples: tuple[int, ...]) -> tuple[int, ...]:
        tile = self.tile
        if tile is None:
            tile = DEFAULT_TILE_2D if len(padded) == 2 else DEFAULT_TILE_3D
        if np.isscalar(tile):
            tile = (min(int(tile), 64) if len(padded) == 3 else int(tile),) * (len(padded) - 2) + (int(tile),) * 2
        tile = tuple(tile)[-len(padded):]
        return tuple(min(_round_up(t, m), p) for t, p, m in zip(tile, padded, multiples))

    def _axis_plan(self, size: int, tile: int, multiple: int):
        overlap = self.overlap if self.overlap is not None else 2 * self.margin + self.blend
        overlap = min(overlap, tile // 2 // multiple * multiple)
        margin = max(0, min(self.margin, (overlap - self.blend) // 2))
        blend = max(1, overlap - 2 * margin)
        starts = tile_starts(size, tile, overlap, multiple)
        windows = [_ramp(tile, margin, blend, s > 0, s + tile < size) for s in starts]
        return starts, windows

    def __call__(self, canonical, normalization, progress: Callable[[int, int], None] | None = None):
        """Predict a canonical array (N, C, [Z,] Y, X) in raw units; returns (N, outputs*C, ...) float32
        in raw units. Samples are normalised one at a time, so memory follows one sample, not the stack."""
        return drain(self.steps(canonical, normalization), progress)

    def steps(self, canonical, normalization):
        """The same as a generator: yields (tiles done, tiles in all) and returns the result, so a
        worker thread can report progress and be cancelled between batches of tiles."""
        n, c, *spatial = canonical.shape
        multiples = self.multiples if len(self.multiples) == len(spatial) else (self.multiple,) * len(spatial)
        padded = tuple(_round_up(s, m) for s, m in zip(spatial, multiples))
        tile = self._tile_shape(padded, multiples)
        plans = [self._axis_plan(p, t, m) for p, t, m in zip(padded, tile, multiples)]
        origins = np.stack(np.meshgrid(*[p[0] for p in plans], indexing="ij"), -1).reshape(-1, len(spatial))
        window_index = np.stack(np.meshgrid(*[range(len(p[0])) for p in plans], indexing="ij"), -1).reshape(-1, len(spatial))
        total, done = n * len(origins), 0
        outputs = len(self.method.outputs) * c
        result = np.empty((n, outputs, *spatial), dtype=np.float32)
        self.network.eval()
        for i in range(n):
            pad = [(0, 0)] + [(0, p - s) for p, s in zip(padded, spatial)]
            image = np.pad(normalization.apply(canonical[i : i + 1])[0], pad, mode="reflect")
            accumulated = np.zeros((outputs, *padded), dtype=np.float32)
            weights = np.zeros(padded, dtype=np.float32)
            for first in range(0, len(origins), self.batch_size):
                chosen = range(first, min(first + self.batch_size, len(origins)))
                boxes = [tuple(slice(o, o + t) for o, t in zip(origins[j], tile)) for j in chosen]
                batch = np.stack([image[(slice(None), *box)] for box in boxes])
                predicted = self._predict_batch(batch)
                for j, box, tile_out in zip(chosen, boxes, predicted):
                    w = _outer([plans[a][1][window_index[j][a]] for a in range(len(spatial))])
                    accumulated[(slice(None), *box)] += tile_out * w
                    weights[box] += w
                done += len(chosen)
                yield done, total
            crop = tuple(slice(0, s) for s in spatial)
            blended = (accumulated / weights)[(slice(None), *crop)]
            for k, name in enumerate(self.method.outputs):
                part = blended[None, k * c : (k + 1) * c]
                result[i, k * c : (k + 1) * c] = self.method.denormalize_output(name, part, normalization)[0]
        return result

    def _predict_batch(self, batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(batch).to(self.device).contiguous(memory_format=self.memory_format)
        with torch.no_grad():
            if not self.tta:
                return self.method.predict(self.network, x).float().cpu().numpy()
            total = None
            for k, flip in _tta_transforms(x.dim() - 2):
                y = _undo(self.method.predict(self.network, _apply(x, k, flip)).float(), k, flip)
                total = y if total is None else total + y
            return (total / 8).cpu().numpy()


def _outer(vectors: list[np.ndarray]) -> np.ndarray:
    w = vectors[0]
    for v in vectors[1:]:
        w = np.multiply.outer(w, v)
    return w.astype(np.float32)
