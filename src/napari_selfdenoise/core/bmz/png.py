"""The export's cover image: a grey-scale PNG written without an imaging library."""

from __future__ import annotations

import struct
import zlib

import numpy as np


def cover_png(noisy: np.ndarray, denoised: np.ndarray) -> bytes:
    """A 2:1 grey-scale PNG: the noisy crop | the denoised crop (middle Z plane, first channel)."""
    def plane(a):
        a = np.asarray(a, np.float32)[0, 0]
        while a.ndim > 2:
            a = a[a.shape[0] // 2]
        return a

    left, right = plane(noisy), plane(denoised)
    low, high = np.percentile(left, (0.5, 99.5))
    if not high > low:
        high = low + 1.0
    height = 256
    rows = np.linspace(0, left.shape[0] - 1, height).round().astype(int)
    cols = np.linspace(0, left.shape[1] - 1, height).round().astype(int)
    tiles = [np.clip((p[np.ix_(rows, cols)] - low) / (high - low), 0, 1) for p in (left, right)]
    image = (np.concatenate(tiles, axis=1) * 255).round().astype(np.uint8)
    return png_bytes(image)


def png_bytes(gray: np.ndarray) -> bytes:
    """Encode an 8-bit grey-scale image as PNG (no imaging library needed)."""
    height, width = gray.shape
    raw = b"".join(b"\x00" + gray[row].tobytes() for row in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))

