"""U-Net for 2D and 3D, with the N2V2 variant (blur-pool downsampling, no top skip connection)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _conv(dims: int):
    return nn.Conv2d if dims == 2 else nn.Conv3d


class ConvBlock(nn.Sequential):
    """Two 3x3(x3) convolutions with ReLU; no batch norm (it costs ~2x on the CPU and helps little here)."""

    def __init__(self, dims: int, c_in: int, c_out: int):
        conv = _conv(dims)
        super().__init__(
            conv(c_in, c_out, 3, padding=1), nn.ReLU(inplace=True),
            conv(c_out, c_out, 3, padding=1), nn.ReLU(inplace=True),
        )


class MaxBlurPool(nn.Module):
    """N2V2's anti-aliased downsampling: max over 2x2 with stride 1, then a [1,2,1] blur with stride 2.

    ``pool_z=False`` (3D) leaves Z alone: max and blur act on Y and X only.
    """

    def __init__(self, dims: int, channels: int, pool_z: bool = True):
        super().__init__()
        self.dims, self.channels = dims, channels
        self.window = [2] * dims if pool_z or dims == 2 else [1, 2, 2]
        # F.pad takes (last axis first) pairs; axes that are not pooled get no padding.
        self.pad_max = [p for size in self.window[::-1] for p in (0, size - 1)]
        self.pad_blur = [p for size in self.window[::-1] for p in (size - 1, size - 1)]
        kernel = torch.ones(())
        for size in self.window:
            taps = torch.tensor([1.0, 2.0, 1.0]) if size == 2 else torch.ones(1)
            kernel = kernel[..., None] * taps
        kernel = kernel / kernel.sum()
        self.register_buffer("kernel", kernel.expand(channels, 1, *kernel.shape).contiguous(), persistent=False)

    def forward(self, x):
        # Lists computed in __init__: the bioimage.io export scripts the network (TorchScript: no tuple maths).
        if self.dims == 2:
            x = F.max_pool2d(F.pad(x, [0, 1, 0, 1], mode="replicate"), 2, stride=1)
            x = F.conv2d(F.pad(x, [1, 1, 1, 1], mode="reflect"), self.kernel, stride=2, groups=self.channels)
        else:
            x = F.max_pool3d(F.pad(x, self.pad_max, mode="replicate"), self.window, stride=1)
            x = F.conv3d(F.pad(x, self.pad_blur, mode="replicate"), self.kernel, stride=self.window,
                         groups=self.channels)
        return x


class UNet(nn.Module):
    """A plain U-Net: ``depth`` poolings, ``features`` channels at the top, doubled per level.

    ``n2v2=True`` swaps max-pooling for MaxBlurPool and drops the top skip connection, the two changes
    that remove Noise2Void's checkerboard artefacts (Hoeck et al. 2022).
    3D: only the first ``z_levels`` poolings (default all) also halve Z; the others pool Y and X only,
    for thin stacks whose Z is much coarser than Y and X. Spatial sizes must be multiples of
    ``pool_multiples`` (prediction pads to that).
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 1, dims: int = 2, depth: int = 2,
                 features: int = 32, n2v2: bool = False, z_levels: int | None = None):
        super().__init__()
        self.dims, self.depth, self.n2v2 = dims, depth, n2v2
        self.z_levels = depth if z_levels is None or dims == 2 else int(z_levels)
        if not 0 <= self.z_levels <= depth:
            raise ValueError(f"z_levels must be in [0, depth={depth}], got {z_levels}")
        widths = [features * 2**level for level in range(depth + 1)]
        self.encoders = nn.ModuleList()
        self.downs = nn.ModuleList()
        c = in_channels
        for level in range(depth):
            self.encoders.append(ConvBlock(dims, c, widths[level]))
            window = self._window(level)
            self.downs.append(MaxBlurPool(dims, widths[level], pool_z=window[0] == 2) if n2v2 else
                              (nn.MaxPool2d(2) if dims == 2 else nn.MaxPool3d(window)))
            c = widths[level]
        self.bottleneck = ConvBlock(dims, c, widths[depth])
        self.decoders = nn.ModuleList()
        for level in reversed(range(depth)):
            skip = 0 if (n2v2 and level == 0) else widths[level]
            self.decoders.append(ConvBlock(dims, widths[level + 1] + skip, widths[level]))
        self.head = _conv(dims)(widths[0], out_channels, 1)
        # per decoder (deepest first): the upsampling factors that undo that level's pooling
        self.up_scales = [[float(f) for f in self._window(level)] for level in reversed(range(depth))]

    def _window(self, level: int) -> tuple[int, ...]:
        """The pooling window at ``level``: 2 per axis, but 1 in Z from level ``z_levels`` on."""
        return (2,) * self.dims if self.dims == 2 or level < self.z_levels else (1, 2, 2)

    # not for TorchScript (the bioimage.io export), which reads this list by its name
    __jit_unused_properties__ = ["pool_multiples"]  # noqa: RUF012

    @property
    def pool_multiples(self) -> tuple[int, ...]:
        """What each spatial size must be a multiple of: ([Z,] Y, X)."""
        yx = 2**self.depth
        return (yx, yx) if self.dims == 2 else (2**self.z_levels, yx, yx)

    def forward(self, x):
        skips: list[torch.Tensor] = []
        for encode, down in zip(self.encoders, self.downs):
            x = encode(x)
            skips.append(x)
            x = down(x)
        x = self.bottleneck(x)
        for index, decode in enumerate(self.decoders):
            level = self.depth - 1 - index
            x = F.interpolate(x, scale_factor=self.up_scales[index], mode="nearest")
            if not (self.n2v2 and level == 0):
                x = torch.cat([x, skips[level]], dim=1)
            x = decode(x)
        return self.head(x)


# Below this many Z planes a 3D U-Net pools only Y and X: such stacks are usually coarse in Z.
MIN_PLANES_FOR_Z_POOLING = 8


def auto_z_levels(planes: int, depth: int) -> int:
    """How many poolings also halve Z: none for thin stacks, else as many as the planes allow."""
    if planes < MIN_PLANES_FOR_Z_POOLING:
        return 0
    return min(depth, planes.bit_length() - 1)


def receptive_radius(depth: int) -> int:
    """A safe bound on how far (in pixels) an output pixel sees, for tile halos."""
    # Two 3x3 convs per block: radius 2 * 2**level on the way down and up, 2 * 2**depth at the bottom,
    # plus the pooling/blur footprint at each level.
    down_up = sum(4 * 2**level + 2 * 2**level for level in range(depth))
    return down_up + 2 * 2**depth + 2


def build_unet(architecture: dict) -> UNet:
    """Build a U-Net from the ``architecture`` dict stored in model files (keys: UNet's arguments)."""
    allowed = {"in_channels", "out_channels", "dims", "depth", "features", "n2v2", "z_levels"}
    return UNet(**{k: v for k, v in architecture.items() if k in allowed})


class NoiseHead(nn.Module):
    """N-net: maps the signal estimate, pixel by pixel, to a noise distribution around it.

    Pointwise (1x1 convolutions), so the output is a pure function of the local signal: exactly the
    noise-level function sigma(signal) a microscopist wants to read off. Per channel and component k it
    outputs a weight logit, a mean offset and a std (``mixture`` = 1 gives a single Gaussian).
    """

    def __init__(self, channels: int, dims: int, mixture: int = 1, features: int = 32, structure: bool = False):
        super().__init__()
        conv = _conv(dims)
        self.channels, self.mixture = channels, mixture
        self.body = nn.Sequential(
            conv(channels, features, 1), nn.SiLU(), conv(features, features, 1), nn.SiLU(),
            conv(features, channels * mixture * 3, 1),
        )
        # Training only: the hidden pixel's residual is noise plus the blind-spot prediction's error, which
        # is largest where the signal has structure. A per-channel weight w >= 0 widens the distribution by
        # sqrt(1 + w * |grad signal|^2) there, so that sigma(signal) is fitted by the flat parts; predictions
        # never include it (B3 in BENCHMARKS.md).
        self.structure_logit = nn.Parameter(torch.full((channels,), -2.0)) if structure else None

    def forward(self, signal):
        """Returns (weights, offsets, sigmas), each (B, C, K, ...): weights sum to 1, offsets are centred
        so the mixture's mean is the signal, sigmas are > 0."""
        raw = self.body(signal)
        shape = raw.shape
        raw = raw.reshape([shape[0], self.channels, 3, self.mixture] + list(shape[2:]))
        weights = torch.softmax(raw[:, :, 0], dim=2)
        offsets = raw[:, :, 1] if self.mixture > 1 else torch.zeros_like(raw[:, :, 1])
        offsets = offsets - (weights * offsets).sum(dim=2, keepdim=True)
        sigmas = F.softplus(raw[:, :, 2]) + 1e-3
        return weights, offsets, sigmas


    def widen_by_structure(self, params, signal):
        """(weights, offsets, sigmas) widened by the blind-spot error term (see ``structure_logit``)."""
        if self.structure_logit is None:
            return params
        weights, offsets, sigmas = params
        shape = (1, -1) + (1,) * (signal.ndim - 2)
        w = F.softplus(self.structure_logit).view(shape)
        factor = torch.sqrt(1 + w * squared_gradient(signal.detach())).unsqueeze(2)  # over the components
        return weights, offsets * factor, sigmas * factor


def squared_gradient(x: torch.Tensor) -> torch.Tensor:
    """|grad x|^2 by central differences over the spatial axes (edge values replicated), same shape."""
    total = torch.zeros_like(x)
    for axis in range(2, x.ndim):
        pad = [0, 0] * (x.ndim - 2)
        pad[2 * (x.ndim - 1 - axis)] = pad[2 * (x.ndim - 1 - axis) + 1] = 1
        padded = F.pad(x, pad, mode="replicate")
        n = x.shape[axis]
        total = total + ((padded.narrow(axis, 2, n) - padded.narrow(axis, 0, n)) / 2) ** 2
    return total


def mixture_std(weights, offsets, sigmas):
    """Std of the mixture (its mean is the signal): sqrt(sum_k w_k (sigma_k^2 + mu_k^2))."""
    return torch.sqrt((weights * (sigmas**2 + offsets**2)).sum(dim=2))


class NNet(nn.Module):
    """D-net (a U-Net predicting the signal) and N-net (the noise head on its output), trained jointly."""

    def __init__(self, in_channels: int = 1, dims: int = 2, depth: int = 2, features: int = 32,
                 n2v2: bool = False, mixture: int = 1, noise_features: int = 32, z_levels: int | None = None,
                 structure: bool = False):
        super().__init__()
        self.dims = dims
        self.denoiser = UNet(in_channels, in_channels, dims, depth, features, n2v2, z_levels)
        self.noise = NoiseHead(in_channels, dims, mixture, noise_features, structure)

    __jit_unused_properties__ = ["pool_multiples"]  # noqa: RUF012 -- for TorchScript, as above

    @property
    def pool_multiples(self) -> tuple[int, ...]:
        return self.denoiser.pool_multiples

    def forward(self, x):
        signal = self.denoiser(x)
        return signal, self.noise(signal)


# What an architecture key means when a model file from an older version lacks it.
ARCHITECTURE_DEFAULTS = {"structure": False, "n2v2": False}


def build_network(architecture: dict) -> nn.Module:
    """Rebuild a network from the ``architecture`` dict stored in model files."""
    kind = architecture.get("kind", "unet")
    if kind == "nnet":
        allowed = {"in_channels", "dims", "depth", "features", "n2v2", "mixture", "noise_features", "z_levels",
                   "structure"}
        return NNet(**{k: v for k, v in architecture.items() if k in allowed})
    if kind != "unet":
        from ..errors import ModelFileError

        raise ModelFileError(f"unknown network kind {kind!r}; this model needs a newer napari-selfdenoise")
    return build_unet(architecture)


class ExportDenoiser(nn.Module):
    """A U-Net model as a bioimage.io package runs it: normalised image in, normalised denoised image out.

    ``ExportDenoiser(**architecture)`` (the architecture dict of the model file) is what the package's
    ``pytorch_state_dict`` weights name; its TorchScript version is the package's ``torchscript`` weights.
    """

    def __init__(self, **architecture):
        super().__init__()
        if architecture.get("kind", "unet") != "unet":
            raise ValueError("ExportDenoiser wraps a U-Net; use ExportNNet for N-net models")
        self.net = build_unet(architecture)

    def forward(self, x):
        return self.net(x)


class ExportNNet(nn.Module):
    """An N-net model for bioimage.io: returns (denoised, noise std), both normalised (std: scale only)."""

    def __init__(self, **architecture):
        super().__init__()
        allowed = {"in_channels", "dims", "depth", "features", "n2v2", "mixture", "noise_features"}
        self.net = NNet(**{k: v for k, v in architecture.items() if k in allowed})

    def forward(self, x) -> tuple[torch.Tensor, torch.Tensor]:
        signal, params = self.net(x)
        weights, offsets, sigmas = params
        return signal, mixture_std(weights, offsets, sigmas)


EXPORT_NETWORKS = {"unet": ExportDenoiser, "nnet": ExportNNet}


def build_export_network(architecture: dict) -> nn.Module:
    """The bioimage.io wrapper of a network described by ``architecture`` (``ExportDenoiser`` or ``ExportNNet``)."""
    kind = architecture.get("kind", "unet")
    if kind not in EXPORT_NETWORKS:
        from ..errors import ModelFileError

        raise ModelFileError(f"unknown network kind {kind!r}; this model needs a newer napari-selfdenoise")
    return EXPORT_NETWORKS[kind](**architecture)
