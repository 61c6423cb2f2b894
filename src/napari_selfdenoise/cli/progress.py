"""Progress bars on stderr (tqdm, imported when a bar is first drawn): tiles/blocks, and training."""

from __future__ import annotations

import sys

from .common import loss_text


class TileProgress:
    """``progress(done, total)`` callback that drives a tqdm bar created on the first call."""

    def __init__(self, desc: str, quiet: bool, unit: str = "tile"):
        self.desc, self.quiet, self.bar, self.unit = desc, quiet, None, unit

    def __call__(self, done: int, total: int):
        if self.quiet:
            return
        if self.bar is None:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=self.desc, unit=self.unit, file=sys.stderr, leave=False,
                            dynamic_ncols=True)
        if total != self.bar.total:  # a stage that re-plans its work (N-net's calibration under a time limit)
            self.bar.total = total
            self.bar.n = done
            self.bar.refresh()
        self.bar.update(done - self.bar.n)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def train_with_progress(model, images, quiet: bool, desc: str = "training"):
    """Run ``model.train`` with a tqdm bar (steps, or seconds when only a time limit bounds it); a
    finishing step after the last step (N-net's calibration) gets a bar of its own: done/total.
    Returns the last training event."""
    last, stage_bar = None, None
    try:
        for event in _shown_on_training_bar(model, images, quiet, desc):
            if "stage_progress" in event.extra:
                stage_bar = stage_bar or TileProgress(event.extra["stage"], quiet, unit="step")
                stage_bar(*event.extra["stage_progress"])
            elif "stage" not in event.extra:
                last = event
    finally:
        if stage_bar is not None:
            stage_bar.close()
    return last


def _shown_on_training_bar(model, images, quiet: bool, desc: str):
    """``model.train``'s events, each passed on once the training bar shows it."""
    from tqdm.auto import tqdm

    config = model.config
    by_time = config.max_steps is None
    total = config.time_limit if by_time else config.max_steps
    fmt = "{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s{postfix}" if by_time else None
    val = None
    start = model.state.elapsed  # a resumed model counts its earlier training time
    first_step = model.state.step  # ... and its earlier steps: the budget counts the new ones
    with tqdm(total=total, desc=desc, unit="s" if by_time else "step", file=sys.stderr, disable=quiet,
              dynamic_ncols=True, bar_format=fmt, leave=True) as bar:
        for event in model.train(images):
            stage = event.extra.get("stage")  # a finishing step after the last step (N-net's calibration)
            if not by_time and event.max_steps and event.max_steps - first_step != bar.total:
                bar.total = event.max_steps - first_step  # auto: every candidate's steps
            if stage is None:
                if event.val_loss is not None:
                    val = event.val_loss
                postfix = {"loss": loss_text(event.train_loss)}
                if "candidate" in event.extra:
                    postfix = {"method": event.extra["candidate"], **postfix}
                if val is not None:
                    postfix["val"] = loss_text(val)
                if by_time:
                    postfix["step"] = event.step
                bar.set_postfix(postfix, refresh=False)
            else:
                bar.set_postfix_str(f"{stage}...", refresh=False)
            position = min(event.elapsed - start, total) if by_time else event.step - first_step
            bar.update(position - bar.n)  # redraws at most every 0.1 s
            if event.done or (stage and "stage_progress" not in event.extra):
                bar.refresh()
            yield event
