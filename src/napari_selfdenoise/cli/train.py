"""``selfdenoise train``: arguments -> TrainConfig -> Denoiser.train, then the model file (rank 0 only
under torchrun)."""

from __future__ import annotations

import time
from dataclasses import fields
from pathlib import Path

from ..core.errors import SelfDenoiseError
from ..core.io.outputs import plan_output
from .common import (
    check_device,
    check_input,
    check_method,
    duration,
    hint_blind_radius,
    load_ours,
    loss_text,
    parse_options,
    read,
    say,
)
from .progress import train_with_progress

# Flags that are TrainConfig fields but not set from ``_config_flags``: the command sets these itself.
_SET_BY_COMMAND = {"method", "axes", "device", "steps", "epochs", "time_limit", "method_options"}


def cmd_train(args) -> int:
    from ..core.data.axes import validate_axes

    out = plan_output(args.out, inputs=[*args.inputs, args.start_from], overwrite=args.overwrite, kind="model file")
    if args.axes:
        validate_axes(args.axes)
    from ..core.config import TrainConfig
    from ..core.denoiser import Denoiser

    given = _config_flags(args, TrainConfig)
    start = _load_start_model(args) if args.start_from else None
    method = check_method(args.method or "auto", auto=True) if args.method or start is None else None
    options = parse_options(args.option)
    if args.mixture is not None:
        options["mixture"] = args.mixture

    images = [read(path, args.axes, start.config.axes if start else None, dask=True)  # big files stay lazy
              for path in args.inputs]
    axes = {image.axes for image in images}
    if len(axes) > 1:
        listed = ", ".join(f"{Path(i.path).name}: {i.axes}" for i in images)
        raise SelfDenoiseError(f"the inputs have different axes ({listed}); train on one kind, or pass --axes")
    axes = images[0].axes
    budget_args = {"steps": args.steps, "epochs": args.epochs, "time_limit": args.time_limit}
    if start is None:
        config = TrainConfig(method=method, axes=axes, device=args.device, method_options=options,
                             **budget_args, **given)
        model = Denoiser(config=config)  # checks the method options
    else:  # the engine's rule: what may change, what the network fixes
        model = start
        model.prepare_fine_tuning(axes, device=args.device, method_options=options, **budget_args, **given,
                                  **({"method": method} if method else {}))
    device = check_device(args.device)
    for image in images:
        check_input(image, Path(image.path).name)
        model.check_training_image(image.data.shape, image.axes, Path(image.path).name)

    from ..core.training import distributed

    group = distributed.init_from_env(args.device)  # torchrun: join the other processes
    try:
        return _train_and_save(model, images, out, device, group, args.quiet, args.start_from)
    finally:
        distributed.shutdown()


def _config_flags(args, config_class) -> dict:
    """The TrainConfig fields given as flags (--patch-z -> patch_z), their defaults left to TrainConfig."""
    return {f.name: getattr(args, f.name) for f in fields(config_class)
            if f.name not in _SET_BY_COMMAND and getattr(args, f.name, None) is not None}


def _train_and_save(model, images, out, device, group, quiet: bool, start_from=None) -> int:
    """Train, then write the model; with several processes only rank 0 reports and writes."""
    config, method = model.config, model.config.method
    report = say if group.is_main else (lambda *args: None)
    budget = [f"{config.max_steps} steps" if config.max_steps else None,
              f"at most {duration(config.time_limit)}" if config.time_limit else None]
    sizes = ", ".join("x".join(map(str, i.data.shape)) for i in images)
    each = config.batch // group.world_size if config.batch else "chosen for the device"
    where = f"{group.world_size} processes ({device.type}), batch {each} each" \
        if group.active else str(device)
    verb = f"fine-tuning {method} (from {Path(start_from).name}, {model.state.step} steps)" if start_from \
        else f"training {method}"
    if model.method is None:  # auto: the candidates race
        from ..core.training.auto import check_candidates

        verb += f" (the classic filter, then {', '.join(check_candidates(config.method_options))} race)"
    # methods with the option, left at 0 (auto decides itself and says so in a note)
    if group.is_main and model.method is not None and model.method.options.get("blind_radius") == 0:
        hint_blind_radius(images[0], "--option blind_radius=2")
    report(f"{verb} on {len(images)} image(s) ({config.axes}: {sizes}) for "
        f"{' or '.join(b for b in budget if b)} on {where}")
    started = time.perf_counter()
    first_step = model.state.step
    last = train_with_progress(model, [image.data for image in images], quiet or not group.is_main)
    if not group.is_main:
        return 0
    for note in last.extra.get("notes", []) if last is not None else []:
        report(note)
    model.save(out)
    state = model.state
    done = f"{state.step - first_step} more steps ({state.step} in all)" if start_from else f"{state.step} steps"
    if model.auto is not None:
        report(_auto_summary(model.auto))
        method = f"auto (winner {model.auto.winner}; network {model.config.method})"
    report(f"trained {method} for {done} in {duration(time.perf_counter() - started)}, "
        f"best validation loss {loss_text(state.best_val_loss)}; model saved to {out}")
    return 0


def _auto_summary(auto) -> str:
    """The score table, winner and quality estimate of an auto model (train summary, info)."""
    lines = ["self-supervised score (masked-pixel loss on the same held-out pixels; lower is better):"]
    lines += [f"  {line}" for line in auto.table().splitlines()]
    lines.append(f"winner: {auto.winner}")
    if auto.estimate is not None:
        lines.append(f"quality estimate: {auto.estimate.text()}")
    return "\n".join(lines)


def _load_start_model(args):
    """The model that ``train --from`` continues: one trained with napari-selfdenoise (what may change is
    the engine's rule: ``Denoiser.prepare_fine_tuning``)."""
    model = load_ours(args.start_from, args.trust_code, "fine-tuned")
    if not model.trainable:
        raise SelfDenoiseError(f"{args.start_from} is a foreign bioimage.io model (prediction only); only "
                               "models trained with napari-selfdenoise can be fine-tuned")
    return model
