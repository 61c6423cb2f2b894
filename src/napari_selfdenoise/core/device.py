"""Choosing the compute device: "auto" means CUDA, then Apple's MPS, then the CPU."""

from __future__ import annotations

import torch

from .errors import SelfDenoiseError


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
