"""Shared helpers for the benchmark scripts: data location, machine description, PSNR, result files."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
from pathlib import Path

import numpy as np

from napari_selfdenoise.core.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"
TRAIN_DEFAULTS = TrainConfig()


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="benchmark data folder (../shared/data)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=None, help="write results as JSON here")
    return parser


def add_training_arguments(parser: argparse.ArgumentParser, batch: int = 8, features: int = 16) -> None:
    """The training settings every benchmark exposes (defaults: a CPU budget)."""
    parser.add_argument("--batch", type=int, default=batch)
    parser.add_argument("--patch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=TRAIN_DEFAULTS.lr, help="learning rate (default: the package's)")
    parser.add_argument("--lr-decay", type=float, default=TRAIN_DEFAULTS.lr_decay,
                        help="share of the budget at its end over which the rate decays (default: the package's)")
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--features", type=int, default=features, help=f"U-Net width (default {features})")
    parser.add_argument("--seed", type=int, default=0)


def psnr(reference: np.ndarray, image: np.ndarray, peak: float = 255.0) -> float:
    mse = np.mean((np.asarray(reference, np.float64) - np.asarray(image, np.float64)) ** 2)
    return float(10 * np.log10(peak**2 / mse))


def psnr_affine(reference: np.ndarray, image: np.ndarray, peak: float = 255.0) -> float:
    """PSNR after the least-squares affine fit ``a * image + b`` to the reference (CARE protocol)."""
    x = np.asarray(image, np.float64).ravel()
    y = np.asarray(reference, np.float64).ravel()
    a, b = np.polyfit(x, y, 1)
    return psnr(y, a * x + b, peak)


def machine() -> dict:
    import torch

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                text=True).stdout.strip()
    except OSError:
        commit = "?"
    return {"date": datetime.datetime.now().isoformat(timespec="minutes"), "cpu": cpu, "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "gpu": gpu, "torch": torch.__version__, "commit": commit}


def save(results: dict, out: Path | None, quiet: bool = False) -> None:
    text = json.dumps(results, indent=2)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    if not quiet:
        print(text)


def auto_summary(model) -> dict:
    """Method auto: ``{"auto": its winner, score table and estimate}`` (the table also printed); else {}."""
    if model.auto is None:
        return {}
    print(model.auto.table(), flush=True)
    return {"auto": model.auto.to_dict()}
