"""``selfdenoise noise``: the noise-level curve (std and skewness of noisy - denoised per signal bin) as CSV."""

from __future__ import annotations

from pathlib import Path

from ..core.errors import SelfDenoiseError
from ..core.io.outputs import plan_output
from .common import check_input, read, say
from .progress import TileProgress


def cmd_noise(args) -> int:
    from ..core.denoiser import Denoiser
    from ..core.noise import noise_curve

    out = plan_output(args.out, inputs=[args.model, args.input], overwrite=args.overwrite, kind="curve file")
    if args.bins < 1:
        raise SelfDenoiseError("--bins must be a positive integer")
    model = Denoiser.load(args.model, trust_code=args.trust_code)
    image = read(args.input, args.axes, model.axes)
    check_input(image, Path(args.input).name)
    model.check_axes(image.data.shape, image.axes)
    progress = TileProgress(Path(args.input).name, args.quiet)
    try:
        outputs = model.predict_outputs(image.data, image.axes, device=args.device, progress=progress)
    finally:
        progress.close()
    curve = noise_curve(image.data, outputs["denoised"], outputs.get("noise_std"), bins=args.bins)
    from ..core.io.atomic import atomic_write

    with atomic_write(out) as tmp:
        curve.write_csv(tmp)
    say(f"noise curve ({len(curve.signal)} bins) written to {out}")
    return 0
