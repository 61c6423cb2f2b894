"""``selfdenoise info``: describe a model file or bioimage.io package (foreign ones too, untrusted or not)."""

from __future__ import annotations

from .._version import __version__
from .common import duration, loss_text, say


def _z_pooling(arch: dict) -> str:
    if arch.get("dims") != 3:
        return ""
    levels = arch.get("z_levels", arch.get("depth"))  # older files pool Z at every level
    return ", Z pooled at every level" if levels == arch.get("depth") else \
        f", Z pooled at {levels} of {arch.get('depth')} levels (Y and X only below)"


def cmd_info(args) -> int:
    from ..core.denoiser import Denoiser

    # A foreign package is described even when its code is not trusted (its weights are then not loaded).
    model = Denoiser.load(args.model, trust_code=args.trust_code, describe_untrusted=True)
    if not model.trainable:
        rows = model.describe()
        width = max(len(k) for k, _ in rows)
        for key, value in rows:
            say(f"{key + ':':<{width + 1}} {value}")
        return 0
    config, arch, state = model.config, model.architecture, model.state
    version = getattr(model, "package_version", __version__)
    budget = [f"{k} {v}" for k, v in (("steps", config.steps), ("epochs", config.epochs),
                                        ("time limit", config.time_limit)) if v is not None]
    rows = [
        ("model", str(args.model)),
        ("method", f"{config.method} ({model.method.title})"),
        ("axes", config.axes),
        ("outputs", ", ".join(model.method.outputs)),
        ("trained", f"{state.step} steps in {duration(state.elapsed)}"),
        ("best val loss", loss_text(state.best_val_loss)),
        ("network", f"{arch.get('dims', '?')}D U-Net{' (N2V2)' if arch.get('n2v2') else ''}, depth "
                    f"{arch.get('depth')}, {arch.get('features')} features, {arch.get('in_channels')} channel(s)"
                    + _z_pooling(arch)),
        ("training", f"patch {config.patch}, batch {config.batch}"
                     + (f" in {config.accumulate} micro-batches" if config.accumulate > 1 else "")
                     + f", lr {config.lr_text()}, seed {config.seed}"
                     + (f", {', '.join(budget)}" if budget else "")),
    ]
    if config.method_options:
        rows.append(("options", ", ".join(f"{k}={v}" for k, v in config.method_options.items())))
    if model.auto is not None:
        rows.append(("auto", f"winner {model.auto.winner}" + (f" (applied; network {config.method} kept)"
                                                             if model.auto.winner != config.method else "")))
        rows.append(("scores", "\n" + "\n".join(f"  {line}" for line in model.auto.table().splitlines())))
        rows.append(("quality", model.auto.estimate.text() if model.auto.estimate else "-"))
    rows.append(("saved by", f"napari-selfdenoise {version} (this is {__version__})"))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        say(f"{key + ':':<{width + 1}} {value}")
    return 0
