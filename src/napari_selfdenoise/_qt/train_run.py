"""The Train widget's run controller: a job started in a worker thread (train, auto race or classic),
Pause / Stop / Cancel, the messages the worker sends (progress, previews, stages, the result, errors) and
the status line. The handlers run on the main thread and only store data and add layers."""

from __future__ import annotations

import time

from qtpy.QtWidgets import QTableWidgetItem

from .._layers import check_layer, placement, result_layer_kwargs, shape_boxes, view_position
from ..core.errors import SelfDenoiseError
from .common import duration, end_worker, notify_error, on_array, on_window_close, rate_text, start_job
from .train_form import AUTO, CLASSIC

# What a run is doing, as the status line and ``state_changed`` say it. ACTIVE ones can be paused.
STATES = ("idle", "starting", "running", "paused", "stopping", "finishing", "predicting", "checking", "cancelled",
          "done", "failed")
ACTIVE = ("starting", "running", "stopping", "finishing", "predicting", "checking")
# Stage messages: the phase they belong to and what the status line calls them.
STAGES = {"predicting": ("predicting", "Denoising the whole image with the best weights"),
          "calibrating": ("predicting", "Calibrating the classical filters"),
          "denoising": ("predicting", "Denoising with the best filter"),
          "checking": ("checking", "Comparing the result with the classical filter (self-supervised score)")}


class TrainRun:
    """The run part of ``TrainWidget`` (a mixin: it works on the widget's controls and state)."""

    # -------------------------------------------------------------- run control
    def start(self) -> None:
        """Train (or calibrate) on the chosen layer in a worker thread."""
        if self.worker is not None:
            return
        try:
            job, run = self._prepare()
        except SelfDenoiseError as err:
            notify_error(err)
            return
        self.run, self.first_preview_seconds = run, None
        if self.denoiser is not None:  # fine-tuning continues a model's counters: progress is this run's
            run.update(step0=self.denoiser.state.step, elapsed0=self.denoiser.state.elapsed,
                       time_limit=self.denoiser.config.time_limit)
        self.compare_button.setChecked(False)  # a new run: back to the user's own view
        self.loss_plot.clear_data()
        self.loss_plot.set_note("No loss: classic calibrates filters, it does not train (see Scores and "
                                "Noise level)" if self.method == CLASSIC else "")
        self.noise_plot.clear_data()
        self.losses = {"step": [], "train": [], "val_step": [], "val": []}
        self.paused = False
        self.classic_button.setVisible(False)
        self.status.setStyleSheet("")
        self.score_table.setRowCount(0)
        self.progress.setRange(0, 1000)
        self.progress.setValue(0)
        self._set_phase("starting", "Starting...")
        self.worker = start_job(job, self._on_message, self._on_result, self._on_error, self._on_finished)
        on_window_close(self, stop_on_close(self))
        self.clock.start()
        self._set_running(True)

    def _prepare(self):
        from ..core.jobs import auto_job, box_regions, classic_job, preview_region, train_job
        from ..core.training.verdict import checked_job

        layer = self.image_picker.layer()
        axes = self.axes_edit.text().strip().upper()
        check_layer(layer, axes)
        run = {"source": layer, "axes": axes, "method": self.method, "started": time.monotonic(),
               "preview_layer": None}
        if self.method == CLASSIC:
            self.denoiser = None
            radius = self.option_controls["blind_radius"].value()
            return on_array(layer.data, lambda image: classic_job(image, axes, blind_radius=radius)), run
        from ..core.denoiser import Denoiser

        if self.start_from is not None:
            # a fresh copy from the file for every run: pressing Train twice does not tune twice
            self.denoiser = Denoiser.load(self.start_from[0])
            wanted = self.config(axes).to_dict()
            changes = {k: wanted[k] for k in ("steps", "time_limit", "patch", "batch", "seed", "val_fraction",
                                              "device", "curve_every")}
            for key in ("lr", "lr_decay"):  # the model's own unless the user changed it
                if wanted[key] != getattr(self.denoiser.config, key):
                    changes[key] = wanted[key]
            self.denoiser.prepare_fine_tuning(axes, **changes)
            self.denoiser.check_axes(layer.data.shape, axes)
            run.update(method=self.denoiser.config.method, fine_tuned=True)
        else:
            self.denoiser = Denoiser(config=self.config(axes))
        shape = layer.data.shape
        regions = None
        shapes = self.region_picker.layer()
        if shapes is not None:
            if len(shapes.data) == 0:
                raise SelfDenoiseError(f"the Shapes layer {shapes.name!r} is empty; draw rectangles on it "
                                       "or train on the whole image")
            # a region smaller than a patch cannot be trained on: say so in the region's terms
            yx = [shape[axes.index(a)] for a in "YX"]
            regions = box_regions(shape_boxes(shapes, layer, axes), shape, axes,
                                  minimum=min(self.patch.value(), *yx))
        preview = preview_region(shape, axes, view_position(layer, self.viewer), depth=self.denoiser.config.patch_z)
        denoiser, tta = self.denoiser, self.tta.isChecked()
        if run["method"] == AUTO:  # the race compares with the classical filter itself
            return on_array(layer.data, lambda image: auto_job(denoiser, image, regions, preview, tta)), run
        # a trained result is checked against the classical filter before it is handed back
        return on_array(layer.data, lambda image: checked_job(
            train_job(denoiser, image, regions, preview, tta), denoiser, image, axes)), run

    def set_paused(self, paused: bool) -> None:
        if self.worker is None:
            return
        self.pause_button.setText("Resume" if paused else "Pause")
        self.paused = paused
        if paused:
            self.worker.pause()
        else:
            self.worker.resume()
        self._render_status()

    def stop(self) -> None:
        """End training after the current step; the best weights so far denoise the image. Pressed while
        the result is being computed (or for the classic method), it cancels without adding layers."""
        if self.worker is None:
            return
        if self.pause_button.isChecked():
            self.pause_button.setChecked(False)
        training = self.denoiser is not None and self.run.get("stage") is None
        if training:
            self.denoiser.stop()
            self._set_phase("stopping", "Stopping after this step; then denoising with the best weights...")
        else:
            self.cancel()

    def cancel(self, why: str = "Cancelled.") -> None:
        """End the run now; nothing is added, and no late message overwrites ``why``."""
        if self.worker is None:
            return
        self.run["cancelled"] = True
        if self.denoiser is not None:
            self.denoiser.stop()
        self.worker.quit()
        self._remove_preview()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self._set_phase("cancelled", why)

    def _layer_removed(self, event) -> None:
        """The layer being trained on went away: end the run; a result for it would have no place."""
        source = self.run["source"] if self.run is not None else None
        if self.worker is not None and not self.run.get("cancelled") and source not in self.viewer.layers:
            self.cancel(f"Cancelled: the layer {source.name!r} was removed while training; nothing added.")

    # ------------------------------------------------------------ status line
    def _set_phase(self, phase: str, detail: str) -> None:
        """What the run is doing (one of STATES) and its details; shown at once, and kept: a message
        that arrives later (a step in flight) cannot overwrite a pause, a stop or a cancellation."""
        if phase != self.phase:
            self.phase, self.phase_started = phase, time.monotonic()
        self.detail = detail
        self._render_status()

    def _render_status(self) -> None:
        detail = self.detail
        reported = (self.run or {}).get("stage_progress")
        if self.phase == "finishing" and not reported:  # no report yet: show that it is alive, and for how long
            detail += f" {duration(time.monotonic() - self.phase_started)} so far (once, after training)"
        paused = self.paused and self.phase in ACTIVE
        self.status.setText(f"Paused (press Resume) · {detail}" if paused else detail)
        state = "paused" if paused else self.phase
        if state != self.state:
            self.state = state
            self.state_changed.emit(state)

    # -------------------------------------------------- messages from the worker
    def _on_message(self, message) -> None:
        if self.closed:
            return
        from ..core.jobs import Preview
        from ..core.steps import Stage
        from ..core.training.trainer import ProgressEvent

        if self.run is None or self.run.get("cancelled"):
            return  # sent before the cancellation reached the worker
        if isinstance(message, ProgressEvent):
            self._on_progress(message)
        elif isinstance(message, Preview):
            self._on_preview(message)
        elif isinstance(message, Stage) and message.name != "previewing":
            self.run["stage"] = message.name
            phase, what = STAGES.get(message.name, ("predicting", message.name.capitalize()))
            self._set_phase(phase, f"{what}: {message.done}/{message.total}")  # first: the bar then matches it
            self.progress.setFormat(f"{message.name} %p%")
            self.progress.setRange(0, message.total)
            self.progress.setValue(message.done)

    def _on_progress(self, event) -> None:
        if "stage" in event.extra:  # a finishing step after the last step (N-net's calibration)
            self._on_finishing(event)
            return
        self.run["last_event"] = event
        if "scores" in event.extra:
            self._show_scores(event.extra["scores"])
        if event.train_loss != event.train_loss:  # NaN: auto's first event (the classical filter) has no loss
            return
        losses = self.losses
        losses["step"].append(event.step)
        losses["train"].append(event.train_loss)
        if event.val_loss is not None:
            losses["val_step"].append(event.step)
            losses["val"].append(event.val_loss)
        self.loss_plot.set_data("training", losses["step"], losses["train"])
        self.loss_plot.set_data("validation", losses["val_step"], losses["val"])
        if "noise_curve" in event.extra:
            self.noise_plot.show_curve(event.extra["noise_curve"])
        if self.phase == "finishing":  # the final event, after the finishing step: training is over
            return
        fraction, left = training_progress(event, self.run)
        self.progress.setRange(0, 1000)
        self.progress.setValue(int(1000 * fraction))
        self.progress.setFormat("training %p%")
        budget = f"/{event.max_steps}" if event.max_steps else ""
        candidate = f" ({event.extra['candidate']})" if "candidate" in event.extra else ""
        detail = (f"Step {event.step}{budget}{candidate} · loss {event.train_loss:.4g} · "
                  f"{rate_text(event.patches_per_second)} · {duration(left)} left")
        if self.phase == "stopping":
            self._set_phase("stopping", f"Stopping after this step; then denoising with the best weights · {detail}")
        else:
            self._set_phase("running", detail)

    def _on_finishing(self, event) -> None:
        """The finishing step: announced (busy bar until its first report), then done/total."""
        stage = self.run["stage"] = event.extra["stage"]
        done_total = self.run["stage_progress"] = event.extra.get("stage_progress")
        if done_total is None:
            self.progress.setRange(0, 0)
            self._set_phase("finishing", f"Training ended at step {event.step}; {stage}...")
            return
        done, total = done_total
        self._set_phase("finishing", f"Training ended at step {event.step}; {stage}: {done}/{total}")
        self.progress.setFormat(f"{stage} %v/%m")
        self.progress.setRange(0, total)
        self.progress.setValue(done)

    def _show_scores(self, rows: list[dict]) -> None:
        """The score table: one row per candidate (auto) or the result and the classical filter."""
        table = self.score_table
        table.setRowCount(len(rows))
        best = min((r["score"] for r in rows if r.get("score") is not None), default=None)
        for number, row in enumerate(rows):
            score = "-" if row.get("score") is None else f"{row['score']:.4g}"
            if row.get("stderr"):
                score += f" ± {row['stderr']:.1g}"
            if row.get("score") is not None and best and row["score"] > best:
                score += f" (+{100 * (row['score'] / best - 1):.0f} %)"
            steps = "calibrated" if row["method"] == CLASSIC else str(row.get("steps", ""))
            for column, text in enumerate((row["method"], score, steps, row.get("status", ""))):
                table.setItem(number, column, QTableWidgetItem(text))

    def _on_preview(self, preview) -> None:
        run = self.run
        if self.first_preview_seconds is None:
            self.first_preview_seconds = time.monotonic() - run["started"]
        source, data = run["source"], preview.outputs["denoised"]
        layer = run["preview_layer"]
        if layer is None or layer not in self.viewer.layers:
            name = f"{source.name} preview ({run['method']})"
            run["preview_layer"] = self.viewer.add_image(
                data, name=name, **placement(source, preview.region), colormap=source.colormap.name,
                contrast_limits=tuple(source.contrast_limits), rgb=bool(getattr(source, "rgb", False)))
        else:
            layer.data = data

    def _on_result(self, result) -> None:
        run = self.run
        if self.closed or run is None or run.get("cancelled"):
            return
        source = run["source"]
        if source not in self.viewer.layers:  # removed while the result was being computed
            self._remove_preview()
            self._set_phase("cancelled", f"Cancelled: the layer {source.name!r} was removed; nothing added.")
            return
        text, warning, method, label = self._result_summary(result)
        # the denoised layer last: on top, selected, not hidden under the noise-std map
        for output in sorted(result.outputs, key=lambda name: name == "denoised"):
            kwargs = result_layer_kwargs(source, output, method, run["axes"], label)
            layer = self._preview_as_result(result.outputs[output], kwargs) if output == "denoised" else None
            self.result_layer = layer or self.viewer.add_image(result.outputs[output], **kwargs)
        self._remove_preview()
        self.classic_button.setVisible(warning)
        self.status.setStyleSheet("color: #d4a72c" if warning else "")
        self.progress.setRange(0, 1)
        self.progress.setValue(1)
        self.progress.setFormat("done")
        self._set_phase("done", text)

    def _result_summary(self, result) -> tuple[str, bool, str, str]:
        """The status line, whether it warns (the result is not better than the classical filter), the
        method that made the result, and the result layers' label: method, steps and time, so that
        several results can be told apart."""
        run = self.run
        took = duration(time.monotonic() - run["started"])
        calibration, race, verdict = (result.extra.get(k) for k in ("calibration", "auto", "verdict"))
        if calibration is not None:
            self.noise_plot.show_curve(result.extra["noise_curve"])
            text = (f"Done: {calibration.denoiser} ({calibration.parameter_name} = "
                    f"{calibration.parameter:.3g}) had the lowest self-supervised loss.")
            return text, False, CLASSIC, f"classic {calibration.denoiser}, {took}"
        steps = self.denoiser.state.step
        how = "stopped early; best weights used" if result.stopped else "done"
        if race is not None:
            self._show_scores([row.to_dict() for row in race.scores])
            estimate = f" Estimated quality: {race.estimate.text()}." if race.estimate is not None else ""
            winner = race.winner if race.winner == CLASSIC else f"{race.winner} ({steps} steps)"
            text = (f"Auto {how}: {winner} scored best of {len(race.scores)} (Scores tab).{estimate}"
                    + (" Save the model to reuse it." if self.denoiser.trained else ""))
            return text, False, race.winner, f"auto: {race.winner}, {steps} steps, {took}"
        method = run["method"] + (" fine-tuned" if run.get("fine_tuned") else "")
        text = f"Training {how} after {steps} steps ({duration(self.denoiser.state.elapsed)})."
        if verdict is not None:
            self._show_scores([{"method": method, "score": verdict.score, "steps": steps, "status": "this result"},
                               {"method": CLASSIC, "score": verdict.classic_score,
                                "status": "better" if verdict.worse else ""}])
            text += f" {verdict.text()}"
        if verdict is None or verdict.good:
            text += " Save the model to reuse it."
        return text, verdict is not None and not verdict.good, run["method"], f"{method}, {steps} steps, {took}"

    def _on_error(self, err) -> None:
        notify_error(err)
        if self.closed:
            return
        self._remove_preview()
        self._set_phase("failed", f"Failed: {err}")

    def _on_finished(self) -> None:
        self.worker = None
        self.clock.stop()
        if self.closed:
            return
        if self.run is not None and self.run.get("cancelled"):
            self._remove_preview()
        self.paused = False
        self._set_running(False)
        if self.phase in ACTIVE:  # ended without a result or an error (e.g. the worker was quit)
            self._set_phase("cancelled", "Cancelled.")

    def _preview_as_result(self, data, kwargs: dict):
        """The live preview layer turned into the denoised result (same colormap and contrast), on top and
        selected; None when there is none or it cannot hold ``data``. Removing a layer costs the viewer a
        garbage collection (~0.3 s, napari's canvas) and adding one its controls: the stall at the end."""
        layer = self.run.get("preview_layer")
        if (layer is None or layer not in self.viewer.layers or layer.data.ndim != data.ndim
                or layer.rgb != kwargs.get("rgb", False)):
            return None
        self.run["preview_layer"] = None
        layer.translate = kwargs["translate"]
        layer.data = data
        layer.name, layer.metadata = kwargs["name"], kwargs["metadata"]
        layers = self.viewer.layers
        layers.move(layers.index(layer), len(layers))
        layers.selection.active = layer
        return layer

    def _remove_preview(self) -> None:
        layer = self.run.get("preview_layer") if self.run else None
        if layer is not None and layer in self.viewer.layers:
            self.viewer.layers.remove(layer)
        if self.run:
            self.run["preview_layer"] = None


def training_progress(event, run: dict) -> tuple[float, float | None]:
    """This run's progress in [0, 1] and the seconds left, by whichever budget ends it first: steps
    or the time limit (a fine-tuning run continues a model's counters, so both count from the run's start)."""
    step, elapsed = event.step - run.get("step0", 0), event.elapsed - run.get("elapsed0", 0.0)
    fractions, lefts = [], []
    if event.max_steps:
        total = max(event.max_steps - run.get("step0", 0), 1)
        fraction = min(1.0, step / total)
        fractions.append(fraction)
        if fraction > 0:
            lefts.append(elapsed * (1 - fraction) / fraction)
    limit = run.get("time_limit")
    if limit:
        fractions.append(min(1.0, elapsed / limit))
        lefts.append(max(0.0, limit - elapsed))
    return (max(fractions) if fractions else 0.0), (min(lefts) if lefts else None)


def stop_on_close(widget):
    """When the viewer closes (or the widget goes away) end its run and wait for the worker thread;
    no new layers are added."""
    def stop(*_):
        widget.closed = True
        if widget.denoiser is not None:
            widget.denoiser.stop()
        if widget.worker is not None:
            end_worker(widget.worker)
    return stop
