"""Tiled prediction with overlap and smooth blending, batched tiles, optional 8x test-time augmentation.

Tiles start on the network's pooling grid and, by default, overlap by twice the receptive radius plus
a blending ramp; pixels closer than the radius to an inner tile edge get (almost) zero weight, so tiled
and whole-image results agree to float precision.
"""

from __future__ import annotations

import copy
import math
import numbers
import warnings
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from ..errors import SelfDenoiseError
from ..nn.device import is_out_of_memory, native_bfloat16, release_cached_memory
from ..nn.networks import UNet, receptive_radius
from ..steps import drain

DEFAULT_TILE_2D = 512  # the largest default tile per axis on a GPU (batches of DEFAULT_BATCH_SIZE)
# On the CPU a tile's pixels cost the same from 256^2 up to the whole 2048^2 image (BENCHMARKS.md, B4), so
# the default tiles are large and fitted to the image: a 2048^2 image is cut into 2 x 2 tiles of 1060^2
# (7 % of the work repeated in the overlaps) instead of 12 x 12 tiles of 256^2 (120 %). 1088^2 x 32
# float32 features is about 150 MB per activation.
CPU_TILE_2D = 1088
DEFAULT_BATCH_SIZE = 4  # tiles per forward pass on a GPU; 1 on the CPU
DEFAULT_TILE_3D = (64, 128, 128)
# 64 x 320 x 320 at most: a 64 x 512 x 512 volume becomes 2 x 2 tiles of 64 x 292 x 292 (1.3x the work)
# instead of 8 x 8 tiles of 64 x 128 x 128 (4x).
CPU_TILE_3D = (64, 320, 320)
PRECISIONS = ("auto", "float32", "bfloat16")
# "auto" runs bfloat16 (on CPUs with native bf16 only) for a job of at least this many tile pixels (all
# samples of the input, x8 with TTA): about 2x faster than float32 within 0.05 dB PSNR (BENCHMARKS.md, B4).
# Smaller jobs take a second or two in float32 and keep its results, equal to whole-image float32 to 1e-4.
BFLOAT16_MIN_PIXELS = 2**20
# "auto" compiles the network (torch.compile with frozen weights, about 1.6x faster than eager) only
# for a job of at least this many tile pixels: the first compilation of a tile shape takes 40-120 s
# on 2 cores, which eager bfloat16 would have spent on about 100 MP.
COMPILE_MIN_PIXELS = 2**28
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


def fitted_tile(size: int, largest: int, overlap: int, multiple: int) -> int:
    """The smallest tile (a multiple of ``multiple``, at most ``largest`` where possible) that covers
    ``size`` with as few tiles as tiles of ``largest`` would, so the overlaps add as little work as they can."""
    if size <= largest:
        return size
    largest_step = max(multiple, (largest - overlap) // multiple * multiple)
    count = math.ceil((size - largest) / largest_step) + 1
    tile = _round_up(math.ceil((size + (count - 1) * overlap) / count), multiple)
    while len(tile_starts(size, tile, overlap, multiple)) > count:  # the step is rounded down to the grid
        tile += multiple
    return min(tile, size)


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


def check_tile(tile):
    """``tile`` as given (None: the default; one edge; or one edge per spatial axis) when every edge is a
    positive whole number; else a one-line ``SelfDenoiseError`` (``tile=0`` or ``-4`` reached torch)."""
    if tile is None:
        return None
    edges = list(tile) if isinstance(tile, (tuple, list)) else [tile]
    if not edges or not all(isinstance(e, numbers.Real) and not isinstance(e, bool) and math.isfinite(e)
                            and e == int(e) and e >= 1 for e in edges):
        raise SelfDenoiseError(f"tile must be a positive number of pixels (or one per spatial axis), not {tile!r}")
    return tile


class TiledPredictor:
    def __init__(self, method, network, depth: int, device: torch.device, tile=None, batch_size: int | None = None,
                 tta: bool = False, overlap: int | None = None, precision: str = "auto",
                 compiled: bool | None = None):
        check_tile(tile)
        if precision not in PRECISIONS:
            raise SelfDenoiseError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
        self.method, self.network, self.device = method, network, device
        self.precision, self.compiled = precision, compiled
        self._kernels: dict[tuple[str, bool], InferenceKernel] = {}
        self.multiple = 2**depth
        # Per spatial axis: a 3D U-Net that pools Z fewer times than Y/X needs a smaller Z multiple.
        self.multiples = tuple(getattr(network, "pool_multiples", ()))
        self.margin = _round_up(receptive_radius(depth), self.multiple)
        self.blend = self.multiple * 4
        self.overlap = overlap
        if batch_size is None:
            batch_size = 1 if device.type == "cpu" else DEFAULT_BATCH_SIZE
        self.tile, self.batch_size, self.tta = tile, max(1, batch_size), tta
        self.forward_limit: int | None = None  # tiles per forward pass, set by an out-of-memory error
        self.memory_format = torch.channels_last if device.type == "cpu" and network.dims == 2 \
            else torch.contiguous_format

    def _tile_shape(self, padded: tuple[int, ...], multiples: tuple[int, ...]) -> tuple[int, ...]:
        tile = self.tile
        if tile is None:
            largest = self._default_tile(len(padded))
            return tuple(fitted_tile(p, t, self._overlap(t, m), m) for p, t, m in zip(padded, largest, multiples))
        if np.isscalar(tile):
            tile = (min(int(tile), 64) if len(padded) == 3 else int(tile),) * (len(padded) - 2) + (int(tile),) * 2
        tile = tuple(tile)[-len(padded):]
        return tuple(min(_round_up(t, m), p) for t, p, m in zip(tile, padded, multiples))

    def _default_tile(self, dims: int) -> tuple[int, ...]:
        """The largest default tile: big on the CPU (fitted to the image), GPU-sized elsewhere."""
        if self.device.type == "cpu":
            return (CPU_TILE_2D,) * 2 if dims == 2 else CPU_TILE_3D
        return (DEFAULT_TILE_2D,) * 2 if dims == 2 else DEFAULT_TILE_3D

    def _overlap(self, tile: int, multiple: int) -> int:
        overlap = self.overlap if self.overlap is not None else 2 * self.margin + self.blend
        return min(overlap, tile // 2 // multiple * multiple)

    def __call__(self, canonical, normalization, progress: Callable[[int, int], None] | None = None):
        """Predict a canonical array (N, C, [Z,] Y, X) in raw units; returns (N, outputs*C, ...) float32
        in raw units. Samples are normalised one at a time, so memory follows one sample, not the stack."""
        return drain(self.steps(canonical, normalization), progress)

    def plan(self, spatial, samples: int = 1) -> TilePlan:
        """The tile grid of an image with ``spatial`` shape (``samples`` of them: frames of a stack): the
        same for a whole image and for any block of it, which is what makes block-wise (streamed,
        distributed) results equal whole-image ones."""
        multiples = self.multiples if len(self.multiples) == len(spatial) else (self.multiple,) * len(spatial)
        padded = tuple(_round_up(s, m) for s, m in zip(spatial, multiples))
        tile = self._tile_shape(padded, multiples)
        overlaps = [self._overlap(t, m) for t, m in zip(tile, multiples)]
        margins = [max(0, min(self.margin, (o - self.blend) // 2)) for o in overlaps]
        return TilePlan.build(tuple(spatial), padded, tile, overlaps, margins, multiples, self.batch_size, samples)

    def kernel(self, plan: TilePlan) -> InferenceKernel:
        """How this plan's tiles go through the network. Chosen from the plan (the tile grid and the
        number of samples: the whole job), never from a block, so whole-image, streamed and distributed
        prediction run the same kernel."""
        work = plan.samples * plan.count * int(np.prod(plan.tile)) * (8 if self.tta else 1)
        precision = self.precision
        if precision == "auto":
            # N-net's posterior weighs the pixel against its noise model and amplifies bfloat16's
            # rounding (mean change 0.007 on a 0-1 image): methods with more outputs than "denoised" keep float32.
            fast = native_bfloat16(self.device) and work >= BFLOAT16_MIN_PIXELS \
                and tuple(getattr(self.method, "outputs", ("denoised",))) == ("denoised",)
            precision = "bfloat16" if fast else "float32"
        compiled = self.compiled
        if compiled is None:
            compiled = self.device.type == "cpu" and work >= COMPILE_MIN_PIXELS
        key = (precision, bool(compiled))
        if key not in self._kernels:
            self._kernels[key] = InferenceKernel(self.method, self.network, precision, bool(compiled),
                                                 self.memory_format)
        return self._kernels[key]

    def steps(self, canonical, normalization):
        """The same as a generator: yields (tiles done, tiles in all) and returns the result, so a
        worker thread can report progress and be cancelled between batches of tiles."""
        n, c, *spatial = canonical.shape
        plan = self.plan(spatial, samples=n)
        padded = plan.padded
        total, done = n * plan.count, 0
        outputs = len(self.method.outputs) * c
        result = np.empty((n, outputs, *spatial), dtype=np.float32)
        self.network.eval()
        kernel = self.kernel(plan)
        for i in range(n):
            pad = [(0, 0)] + [(0, p - s) for p, s in zip(padded, spatial)]
            image = np.pad(normalization.apply(canonical[i : i + 1])[0], pad, mode="reflect")
            accumulated = np.zeros((outputs, *padded), dtype=np.float32)
            weights = np.zeros(padded, dtype=np.float32)
            for chosen in plan.batches():
                boxes = [plan.box(j) for j in chosen]
                batch = np.stack([image[(slice(None), *box)] for box in boxes])
                predicted = self._predict_batch(batch, kernel)
                for j, box, tile_out in zip(chosen, boxes, predicted):
                    w = plan.weight(j)
                    accumulated[(slice(None), *box)] += tile_out * w
                    weights[box] += w
                done += len(chosen)
                yield done, total
            crop = tuple(slice(0, s) for s in spatial)
            blended = (accumulated / weights)[(slice(None), *crop)]
            result[i] = self._denormalize(blended, c, normalization)
        return result

    def predict_block(self, plan: TilePlan, read_tile: Callable, block, normalization) -> np.ndarray:
        """The blended, denormalised outputs (outputs*C, *block shape) of one block of one sample.

        ``block`` is a [start, stop) pair per spatial axis; ``read_tile(box)`` returns the raw
        (C, *tile) input of a box of the reflect-padded image. Every batch of the global tile grid that
        holds a tile touching the block is predicted whole and the touching tiles are accumulated in
        grid order, so each pixel gets bit for bit the sum that ``steps`` computes for the whole image.
        """
        self.network.eval()
        kernel = self.kernel(plan)
        shape = tuple(b - a for a, b in block)
        accumulated = weights = None
        for chosen in plan.batches(plan.touching(block)):
            boxes = [plan.box(j) for j in chosen]
            raw = np.stack([read_tile(box) for box in boxes])
            predicted = self._predict_batch(normalization.apply(raw), kernel)
            if accumulated is None:
                accumulated = np.zeros((predicted.shape[1], *shape), dtype=np.float32)
                weights = np.zeros(shape, dtype=np.float32)
            for j, tile_out in zip(chosen, predicted):
                plan.add_tile(j, tile_out, block, accumulated, weights)
        return self._denormalize(accumulated / weights, accumulated.shape[0] // len(self.method.outputs),
                                 normalization)

    def _denormalize(self, blended: np.ndarray, c: int, normalization) -> np.ndarray:
        parts = [self.method.denormalize_output(name, blended[None, k * c : (k + 1) * c], normalization)[0]
                 for k, name in enumerate(self.method.outputs)]
        return np.concatenate(parts).astype(np.float32, copy=False)

    def _predict_batch(self, batch: np.ndarray, kernel: InferenceKernel) -> np.ndarray:
        """A batch of the plan, in forward passes of at most ``forward_limit`` tiles. Out of memory: the
        limit is halved (with a warning) and the batch predicted again; the plan's batches, hence the
        order in which tiles are blended, stay as they are."""
        while True:
            limit = self.forward_limit or len(batch)
            try:
                return np.concatenate([self._forward(batch[a : a + limit], kernel)
                                       for a in range(0, len(batch), limit)])
            except Exception as error:
                if not is_out_of_memory(error) or limit == 1:
                    raise
            release_cached_memory(self.device)
            self.forward_limit = -(-limit // 2)
            warnings.warn(f"out of {self.device.type.upper()} memory predicting {limit} tiles at once; "
                          f"now {self.forward_limit} at a time", RuntimeWarning, stacklevel=2)

    def _forward(self, batch: np.ndarray, kernel: InferenceKernel) -> np.ndarray:
        x = torch.from_numpy(batch).to(self.device).contiguous(memory_format=self.memory_format)
        with torch.no_grad():
            if not self.tta:
                return kernel(x).float().cpu().numpy()
            total = None
            for k, flip in _tta_transforms(x.dim() - 2):
                # one memory layout for every transform: a compiled kernel is specialised to its strides
                turned = _apply(x, k, flip).contiguous(memory_format=self.memory_format)
                y = _undo(kernel(turned).float(), k, flip)
                total = y if total is None else total + y
            return (total / 8).cpu().numpy()


class InferenceKernel:
    """``method.predict`` on a batch of tiles, in float32 or bfloat16, eager or compiled.

    bfloat16 runs a copy of the network whose U-Nets (the convolutions: nearly all the work) are cast to
    bfloat16 once, between float32 inputs and outputs; everything else (the method's masks and sums,
    N-net's noise head and posterior, which are sensitive to rounding) stays float32. Compiling uses torch.compile
    with frozen weights (oneDNN convolutions fused with their ReLU, generated code for the rest); if that
    fails (no C++ compiler, an unsupported build) the kernel warns once and runs eager from then on.
    A kernel gives the same bits for the same batch every time, which is what tiled, streamed and
    distributed prediction need to agree.
    """

    def __init__(self, method, network: nn.Module, precision: str, compiled: bool, memory_format):
        self.precision, self.compiled = precision, compiled
        if precision == "bfloat16":
            network = _with_bfloat16_unets(copy.deepcopy(network).eval(), memory_format)
        self._eager = _MethodForward(method, network)
        self._run = self._eager
        if compiled:
            try:
                self._run = torch.compile(self._eager, dynamic=False, options={"freezing": True})
            except Exception as err:  # noqa: BLE001 - whatever stops compiling, eager still works
                self._stop_compiling(err)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self._run is self._eager:
            return self._eager(x)
        try:
            return self._run(x)
        except Exception as err:  # noqa: BLE001 - torch.compile compiles on the first call
            self._stop_compiling(err)
            return self._eager(x)

    def _stop_compiling(self, err: Exception):
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else ""
        warnings.warn(f"could not compile the network for prediction ({type(err).__name__}: {first_line}); "
                      "predicting without compiling", RuntimeWarning, stacklevel=3)
        self._run, self.compiled = self._eager, False


class _MethodForward(nn.Module):
    def __init__(self, method, network: nn.Module):
        super().__init__()
        self.method, self.network = method, network

    def forward(self, x):
        return self.method.predict(self.network, x)


def _with_bfloat16_unets(network: nn.Module, memory_format) -> nn.Module:
    """``network`` with every U-Net in it (or itself, if it is one) in bfloat16 behind a float32 face."""
    if isinstance(network, UNet):
        network = network.to(torch.bfloat16)
        if memory_format == torch.channels_last:
            network = network.to(memory_format=memory_format)
        return _CastNetwork(network, torch.bfloat16)
    for name, child in network.named_children():
        setattr(network, name, _with_bfloat16_unets(child, memory_format))
    return network


class _CastNetwork(nn.Module):
    """``network`` (already in ``dtype``) as if it were float32: inputs cast to ``dtype``, every output
    tensor cast back to float32. Its submodules come wrapped the same way (``net.noise(signal)`` for a
    method that calls a part of the network), other attributes as they are."""

    def __init__(self, network: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.network, self.dtype = network, dtype

    def forward(self, *inputs):
        return _to_float32(self.network(*(x.to(self.dtype) for x in inputs)))

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            value = getattr(super().__getattr__("network"), name)
            return _CastNetwork(value, self.dtype) if isinstance(value, nn.Module) else value


def _to_float32(value):
    """A tensor, or nested tuples of them (N-net's outputs), in float32."""
    if isinstance(value, torch.Tensor):
        return value.float()
    if isinstance(value, (tuple, list)):
        return type(value)(_to_float32(v) for v in value)
    return value


class TilePlan:
    """Tile origins on the padded image, their blending windows and the fixed batches of tiles."""

    def __init__(self, spatial, padded, tile, origins, window_index, windows, batch_size, samples: int = 1):
        self.spatial, self.padded, self.tile, self.samples = spatial, padded, tile, samples
        self.origins, self.window_index, self.windows = origins, window_index, windows
        self.batch_size = batch_size

    @classmethod
    def build(cls, spatial, padded, tile, overlaps, margins, multiples, batch_size: int, samples: int = 1) -> TilePlan:
        """The grid over an image of ``spatial`` shape padded to ``padded``: per axis, tiles of ``tile``
        starting on the grid of ``multiples`` and overlapping by at least ``overlaps``; a tile's weight is
        zero within ``margins`` of an inner edge (pixels the network sees without their surroundings), then
        a sin^2 ramp over the rest of the overlap. The native and the foreign predictors both use it."""
        starts = [tile_starts(p, t, o, m) for p, t, o, m in zip(padded, tile, overlaps, multiples)]
        windows = [[_ramp(t, margin, max(1, o - 2 * margin), s > 0, s + t < p) for s in axis_starts]
                   for axis_starts, p, t, o, margin in zip(starts, padded, tile, overlaps, margins)]
        origins = np.stack(np.meshgrid(*starts, indexing="ij"), -1).reshape(-1, len(spatial))
        window_index = np.stack(np.meshgrid(*[range(len(s)) for s in starts], indexing="ij"), -1).reshape(
            -1, len(spatial))
        return cls(tuple(spatial), tuple(padded), tuple(tile), origins, window_index, windows, batch_size, samples)

    @property
    def count(self) -> int:
        return len(self.origins)

    def box(self, j: int) -> tuple[slice, ...]:
        return tuple(slice(int(o), int(o) + t) for o, t in zip(self.origins[j], self.tile))

    def weight(self, j: int) -> np.ndarray:
        return _outer([self.windows[a][self.window_index[j][a]] for a in range(len(self.tile))])

    def add_tile(self, j: int, tile_out: np.ndarray, block, accumulated: np.ndarray, weights: np.ndarray) -> None:
        """Add tile ``j``'s output (channels first), times its weight, to the sums of a block (a
        [start, stop) pair per spatial axis): ``accumulated`` (channels, *block) and ``weights`` (*block)."""
        box = self.box(j)
        inside = _intersect(box, block)
        if inside is None:
            return
        source = tuple(slice(lo - b.start, hi - b.start) for (lo, hi), b in zip(inside, box))
        target = tuple(slice(lo - a, hi - a) for (lo, hi), (a, _) in zip(inside, block))
        w = self.weight(j)[source]
        accumulated[(slice(None), *target)] += tile_out[(slice(None), *source)] * w
        weights[target] += w

    def touching(self, block) -> list[int]:
        """Indices of the tiles that overlap ``block`` (a [start, stop) pair per spatial axis)."""
        hits = np.ones(self.count, dtype=bool)
        for a, (lo, hi) in enumerate(block):
            hits &= (self.origins[:, a] < hi) & (self.origins[:, a] + self.tile[a] > lo)
        return np.flatnonzero(hits).tolist()

    def batches(self, wanted=None):
        """Batches of tile indices, always the same groups of ``batch_size`` consecutive tiles (the
        network's result for a tile may depend on its batch); only those holding a ``wanted`` tile."""
        groups = range(0, self.count, self.batch_size) if wanted is None else \
            sorted({j // self.batch_size * self.batch_size for j in wanted})
        for first in groups:
            yield list(range(first, min(first + self.batch_size, self.count)))


def _intersect(box: tuple[slice, ...], block) -> tuple[tuple[int, int], ...] | None:
    pairs = tuple((max(b.start, lo), min(b.stop, hi)) for b, (lo, hi) in zip(box, block))
    return None if any(lo >= hi for lo, hi in pairs) else pairs


def _outer(vectors: list[np.ndarray]) -> np.ndarray:
    w = vectors[0]
    for v in vectors[1:]:
        w = np.multiply.outer(w, v)
    return w.astype(np.float32)
