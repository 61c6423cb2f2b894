"""Choosing the compute device: "auto" means CUDA, then Apple's MPS, then the CPU."""

from __future__ import annotations

import torch

from ..errors import SelfDenoiseError


def available_devices() -> list[str]:
    """What this machine can really run on, best first (for pickers in the GUI and CLI help)."""
    devices = [f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devices.append("mps")
    return devices + ["cpu"]


def resolve_device(name: str = "auto") -> torch.device:
    if name in (None, "", "auto"):
        return torch.device(available_devices()[0])
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise SelfDenoiseError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SelfDenoiseError("CUDA was requested but no CUDA GPU is available here; use --device cpu or auto")
    if device.type == "mps" and "mps" not in available_devices():
        raise SelfDenoiseError("MPS was requested but is not available here; use --device cpu or auto")
    return device


def prefers_channels_last(device: torch.device) -> bool:
    # Measured on a 2-core x86 CPU: ~1.3x faster training and ~2x faster inference for the U-Net.
    return device.type == "cpu"


# Training batch when the user gives none: the CPU keeps its measured default; GPUs get what fits, up to
# the equivalent of 128 patches of 64^2 (bigger batches would need another learning rate).
CPU_BATCH = 16
MPS_BATCH = 32
MAX_AUTO_PIXELS = 128 * 64 * 64


def configure_for_speed(device: torch.device) -> None:
    """On CUDA: cuDNN picks the fastest convolution for each shape (patches and tiles have few shapes), and
    float32 matmuls/convolutions use TF32 tensor cores (10-bit mantissa products, float32 sums: training
    and denoising do not need more). Process-wide settings, set once a run uses the GPU."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def is_out_of_memory(error: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or the RuntimeError that MPS and the CPU allocator raise."""
    if isinstance(error, getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


def release_cached_memory(device: torch.device) -> None:
    """Hand the allocator's cached blocks back after an out-of-memory error, before trying smaller."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps" and hasattr(torch, "mps"):
        torch.mps.empty_cache()


def batch_that_fits(bytes_per_patch: float, free_bytes: float, patch_pixels: int, multiple: int = 1) -> int:
    """The largest power-of-two batch (times ``multiple``) whose training memory takes at most half of
    ``free_bytes`` (the rest: cuDNN workspaces, fragmentation, other processes), capped at
    ``MAX_AUTO_PIXELS`` patch pixels, at least ``multiple``."""
    cap = max(1, MAX_AUTO_PIXELS // max(1, patch_pixels))
    fits = int(0.5 * free_bytes / max(bytes_per_patch, 1.0))
    batch = 1
    while batch * 2 <= min(cap, fits // multiple):
        batch *= 2
    return batch * multiple


def native_bfloat16(device: torch.device) -> bool:
    """Whether bfloat16 convolutions run natively here (AVX512-BF16 or AMX on the CPU), i.e. faster than
    float32 rather than emulated. Only the CPU is answered; other devices get False (their own paths)."""
    if device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    cpu = getattr(torch, "cpu", None)
    probes = [getattr(cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    try:
        return torch.ops.mkldnn._is_mkldnn_bf16_supported() and any(probe() for probe in probes if probe)
    except (AttributeError, RuntimeError):  # an older or unusual build: stay with float32
        return False
