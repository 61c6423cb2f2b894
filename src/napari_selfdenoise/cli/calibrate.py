"""``selfdenoise calibrate``: the classical baseline, each filter's parameter chosen by the Noise2Self loss."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from ..core.errors import SelfDenoiseError
from ..core.io.outputs import plan_output, plan_outputs, same_file
from .common import IMAGE_SUFFIXES, check_input, duration, hint_blind_radius, read, say, write_json


def cmd_calibrate(args) -> int:
    from ..core.data.axes import validate_axes
    from ..core.io.images import write_image
    from ..core.methods.classic import DENOISER_PARAMETERS, calibrate_and_denoise

    if args.axes:
        validate_axes(args.axes)
    denoisers = tuple(DENOISER_PARAMETERS)
    if args.denoisers is not None:
        denoisers = tuple(d.strip() for d in args.denoisers.split(",") if d.strip())
        unknown = [d for d in denoisers if d not in DENOISER_PARAMETERS]
        if unknown or not denoisers:
            raise SelfDenoiseError(f"unknown classic denoiser {', '.join(unknown) or '(none given)'}; "
                                   f"choose from {', '.join(DENOISER_PARAMETERS)}")
    image = read(args.input, args.axes)
    check_input(image, Path(args.input).name)
    if not args.blind_radius:
        hint_blind_radius(image, "--blind-radius 2")
    target, = plan_outputs([args.input], args.out, overwrite=args.overwrite, suffixes=IMAGE_SUFFIXES)
    report = plan_output(args.report, inputs=[args.input], overwrite=args.overwrite, kind="report") \
        if args.report else None
    if report is not None and same_file(report, target):
        raise SelfDenoiseError(f"the report {report} would overwrite the output image; choose another name")

    from tqdm.auto import tqdm

    started = time.perf_counter()
    with tqdm(desc="calibrating", unit="eval", file=sys.stderr, disable=args.quiet, leave=False,
              dynamic_ncols=True) as bar:
        def progress(done, total):
            bar.total = total
            bar.update(done - bar.n)

        denoised, result = calibrate_and_denoise(image.data, image.axes, denoisers=denoisers, progress=progress,
                                                 blind_radius=args.blind_radius)
    write_image(target, denoised.astype("float32", copy=False), image.axes, image.scale, image.units)
    if report is not None:
        write_json(report, {"input": str(args.input), "output": str(target), "axes": image.axes,
                             **result.to_dict()})
    say(_calibration_table(result))
    say(f"chose {result.denoiser} ({result.parameter_name} {result.parameter:g}) in "
         f"{duration(time.perf_counter() - started)}; wrote {target}" + (f" and {report}" if report else ""))
    return 0


def _calibration_table(result) -> str:
    """The self-supervised loss per parameter, with a bar per row (longer = worse)."""
    rows = [(name, p, loss) for name, curve in result.losses.items() for p, loss in curve]
    if not rows:
        return "no losses"
    low, high = min(r[2] for r in rows), max(r[2] for r in rows)
    width = max(len(name) for name, _, _ in rows)
    lines = ["self-supervised loss per parameter (lower is better; * = chosen):"]
    from ..core.methods.classic import DENOISER_PARAMETERS

    for name, p, loss in rows:
        bar = "#" * (1 + round(19 * (loss - low) / (high - low))) if high > low else "#"
        mark = "*" if name == result.denoiser and p == result.parameter else " "
        label = f"{DENOISER_PARAMETERS.get(name, 'parameter')} {p:g}"
        lines.append(f" {mark} {name:<{width}}  {label:<14} {loss:<11.5g} {bar}")
    return "\n".join(lines)
