"""The Trainer: a generator of progress events that trains any registered method.

Front ends (widget, CLI, tests) iterate over ``Trainer.run()``; each event says where training is.
``stop()`` ends it cleanly at the next step; the best-validation weights are kept either way.

Under ``torchrun`` (an initialised process group, see ``distributed``) each process trains its shards
of the global batch through DistributedDataParallel; rank 0 validates and broadcasts the loss, and the
end of training (budget, time limit, stop) is agreed by all processes at every step.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import inspect
import math
import time
import warnings
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import torch

from . import distributed
from .config import TrainConfig
from .device import prefers_channels_last
from .errors import SelfDenoiseError
from .methods import Method
from .noise import noise_curve
from .patches import PatchSampler, split_regions, validation_patch_count

FINISH_PATCHES = 64  # patches given to ``Method.finish`` (N-net's noise calibration: 262k pixels in 2-D)


@dataclass
class ProgressEvent:
    step: int
    max_steps: int | None
    epoch: int
    train_loss: float
    val_loss: float | None  # set on validation steps only
    best_val_loss: float | None
    lr: float
    elapsed: float  # seconds of training (pauses excluded)
    patches_per_second: float
    done: bool = False
    stopped: bool = False  # ended by stop() rather than by the budget
    extra: dict = field(default_factory=dict)  # method-specific live data (e.g. noise curves)

    @property
    def fraction(self) -> float | None:
        """Progress in [0, 1] by steps, or None when only wall time bounds the run."""
        return None if not self.max_steps else min(1.0, self.step / self.max_steps)


@dataclass
class TrainingState:
    """What a run needs to resume: counters, history, optimizer and scheduler."""

    step: int = 0
    elapsed: float = 0.0
    best_val_loss: float | None = None
    history: dict = field(default_factory=lambda: {"step": [], "train_loss": [], "val_loss": [], "lr": []})
    optimizer: dict | None = None
    scheduler: dict | None = None


class Trainer:
    def __init__(self, config: TrainConfig, method: Method, network: torch.nn.Module, sources,
                 normalization, state: TrainingState | None = None):
        """``sources`` are canonical (N, C, [Z,] Y, X) arrays (numpy or memory-maps), not normalised."""
        self.config, self.method, self.network = config, method, network
        self.normalization = normalization
        self.state = state or TrainingState()
        self.group = distributed.current()
        self.device = distributed.training_device(config.device, self.group)
        shards = self.group.world_size * config.accumulate
        if config.batch % shards:
            raise SelfDenoiseError(
                f"the batch ({config.batch}, the global batch of all processes) must be a multiple of "
                f"processes x accumulate = {self.group.world_size} x {config.accumulate} = {shards}")
        self.shard_size = config.batch // shards
        self._stop_requested = False
        self.running = False  # True while run() holds the network on its training device
        dims = sources[0].ndim - 2
        self.patch_shape = (config.patch,) * 2
        if dims == 3:  # Z patch: at most the thinnest stack, a multiple of what the U-Net pools Z by
            planes, multiple = min(s.shape[2] for s in sources), network.pool_multiples[0]
            patch_z = min(config.patch_z, planes) // multiple * multiple
            if patch_z < 1:
                raise SelfDenoiseError(f"this 3D model pools Z {multiple}-fold, so it needs stacks of at least "
                                       f"{multiple} Z planes; this one has {planes}: train a model with fewer "
                                       f"Z poolings (z_levels, --z-levels), or give axes without Z for a 2D model")
            self.patch_shape = (patch_z, *self.patch_shape)
        train, val, self.split_note = split_regions(sources, self.patch_shape, config.val_fraction)
        # Offset by the step so a resumed run draws new patches rather than replaying the first ones.
        # One random stream per shard of the global batch (see ``distributed``): patches and masks.
        first = self.group.rank * config.accumulate
        self.shard_seeds = distributed.shard_seeds(config.seed + self.state.step,
                                                   range(first, first + config.accumulate))
        self.samplers = [PatchSampler(sources, train, self.patch_shape, normalization, numpy_seed)
                         for numpy_seed, _ in self.shard_seeds]
        val_sampler = PatchSampler(sources, val, self.patch_shape, normalization, config.seed + 1)
        self.val_patches = val_sampler.fixed_set(validation_patch_count(val, self.patch_shape))
        self.curve_crop = self.val_patches[:8]
        self.sources, self.regions = sources, train + val  # for the finishing step's patches
        self.best_weights = copy.deepcopy(network.state_dict())

    def stop(self):
        """Ask the run to end after the current step (thread-safe: it only sets a flag)."""
        self._stop_requested = True

    def _setup(self):
        memory_format = torch.channels_last if prefers_channels_last(self.device) and self.network.dims == 2 \
            else torch.contiguous_format
        self.memory_format = memory_format
        self.network.to(self.device, memory_format=memory_format)
        self.train_network = self.network  # what training_loss runs: the DDP wrapper with several processes
        if self.group.active:
            from torch.nn.parallel import DistributedDataParallel

            if self.device.type == "cuda":  # also when the caller set up the process group itself
                torch.cuda.set_device(self.device)

            # The only buffers (blur kernels) are constants: nothing to broadcast at every forward.
            no_sync = {"forward_sync_buffers": False} if "forward_sync_buffers" in \
                inspect.signature(DistributedDataParallel).parameters else {"broadcast_buffers": False}
            self.train_network = DistributedDataParallel(
                self.network, device_ids=[self.device.index] if self.device.type == "cuda" else None, **no_sync)
        optimizer = torch.optim.Adam(self.method.parameter_groups(self.network, self.config.lr))
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=10)
        if self.state.optimizer:
            try:
                optimizer.load_state_dict(self.state.optimizer)
            except ValueError:  # saved by a version with other parameter groups: keep the weights only
                warnings.warn("the saved optimizer state does not fit this version's parameter groups; "
                              "fine-tuning starts with a fresh optimizer", stacklevel=2)
                self.state.scheduler = None
        if self.state.scheduler:
            scheduler.load_state_dict(self.state.scheduler)
        self.amp_dtype = None
        if self.device.type == "cuda" and self.config.amp:
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        return optimizer, scheduler

    def _to_device(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(array).to(self.device).contiguous(memory_format=self.memory_format)

    def _loss(self, network, batch, gen):
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            return self.method.training_loss(network, batch, gen)

    def validate(self) -> float:
        """The validation loss (with several processes: computed by rank 0, the same on all)."""
        if self.group.active:
            return distributed.broadcast_from_main(self._validate() if self.group.is_main else 0.0)
        return self._validate()

    def _validate(self) -> float:
        self.network.eval()
        gen = torch.Generator().manual_seed(self.config.seed + 12345)  # same masks every time
        losses = []
        with torch.no_grad():  # in shards: the memory of one training shard, whatever the process count
            for start in range(0, len(self.val_patches), self.shard_size):
                chunk = self._to_device(self.val_patches[start : start + self.shard_size])
                # The plain network, not the DDP wrapper: rank 0 validates alone.
                losses.append(float(self._loss(self.network, chunk, gen)) * len(chunk))
        self.network.train()
        return sum(losses) / len(self.val_patches)

    def noise_curve(self):
        """The noise-level curve on the fixed validation crop, in raw units (cheap: one small forward)."""
        self.network.eval()
        with torch.no_grad():
            out = self.method.predict(self.network, self._to_device(self.curve_crop)).float().cpu().numpy()
        self.network.train()
        c = self.curve_crop.shape[1]
        outputs = {name: self.method.denormalize_output(name, out[:, k * c : (k + 1) * c], self.normalization)
                   for k, name in enumerate(self.method.outputs)}
        raw = self.normalization.invert(self.curve_crop)
        return noise_curve(raw, outputs["denoised"], outputs.get("noise_std"))

    def run(self):
        """Train until the budget or ``stop()``; yields a ``ProgressEvent`` after every step.

        Abandoning the generator (break, an exception in the consumer, a quit worker) still restores the
        best weights and keeps the optimizer state for saving and resuming.
        """
        optimizer, scheduler = self._setup()
        self.running = True
        try:
            yield from self._steps(optimizer, scheduler)
        finally:
            self.running = False
            self.train_network = self.network
            self.state.optimizer, self.state.scheduler = optimizer.state_dict(), scheduler.state_dict()
            self.network.load_state_dict(self.best_weights)
            self.network.to("cpu", memory_format=torch.contiguous_format)

    def _steps(self, optimizer, scheduler):
        config, state = self.config, self.state
        torch.manual_seed(config.seed + state.step)
        gens = [torch.Generator().manual_seed(torch_seed) for _, torch_seed in self.shard_seeds]
        max_steps = config.max_steps
        if max_steps is not None and state.step > 0:
            max_steps += state.step  # a resumed run trains for the budget again
        recent = deque(maxlen=config.steps_per_epoch)
        self._first_step, start_elapsed = state.step, state.elapsed
        while True:
            # Only time spent in here counts: a paused consumer (GUI pause, evaluation) costs nothing.
            tick = time.perf_counter()
            self.network.train()
            loss = self._train_step(optimizer, gens)
            state.step += 1
            out_of_time = config.time_limit is not None and \
                state.elapsed + time.perf_counter() - tick - start_elapsed >= config.time_limit
            if self.group.active:  # one agreement per step: the mean loss, and whether any process must stop
                total, late, stop = distributed.sum_over_processes([loss, out_of_time, self._stop_requested])
                loss, out_of_time = total / self.group.world_size, late > 0
                self._stop_requested = self._stop_requested or stop > 0
            recent.append(loss)
            finished = (max_steps is not None and state.step >= max_steps) or out_of_time
            ending = finished or self._stop_requested
            val_loss = None
            if state.step % config.steps_per_epoch == 0 or ending:
                val_loss = self.validate()
                scheduler.step(val_loss)
                self._record(val_loss, float(np.mean(recent)), optimizer)
            event = self._event(state, max_steps, recent, val_loss, optimizer, ending)
            if ending:
                tick = yield from self._finish(event, tick, start_elapsed)
            if config.curve_every and self.group.is_main and (state.step % config.curve_every == 0 or ending):
                event.extra["noise_curve"] = self.noise_curve()
            yield self._timed(event, tick, start_elapsed)
            if ending:
                break
            # stop() came between steps (e.g. from this event's consumer): end here. With several
            # processes the next step's agreement ends all of them together instead.
            if self._stop_requested and not self.group.active:
                tick = time.perf_counter()
                if val_loss is None:
                    val_loss = self.validate()
                    scheduler.step(val_loss)
                    self._record(val_loss, float(np.mean(recent)), optimizer)
                event = self._event(state, max_steps, recent, val_loss, optimizer, True)
                tick = yield from self._finish(event, tick, start_elapsed)
                if config.curve_every:
                    event.extra["noise_curve"] = self.noise_curve()
                yield self._timed(event, tick, start_elapsed)
                break

    def _finish(self, event: ProgressEvent, tick: float, start_elapsed: float):
        """The method's finishing step on the best weights, which it may change (they stay the best).
        First yields a copy of ``event`` (not done) whose ``extra["stage"]`` says what is being done;
        returns the clock's new start for the time that ``event`` will count."""
        if not self.method.finishing:
            return tick
        announce = dataclasses.replace(event, done=False, stopped=False, extra={"stage": self.method.finishing})
        yield self._timed(announce, tick, start_elapsed)
        tick = time.perf_counter()
        self.network.load_state_dict(self.best_weights)
        sampler = PatchSampler(self.sources, self.regions, self.patch_shape, self.normalization, self.config.seed + 2)
        patches = self._to_device(sampler.fixed_set(FINISH_PATCHES))  # from everywhere: train and validation
        gen = torch.Generator().manual_seed(self.config.seed + 54321)
        note = self.method.finish(self.network, patches, gen)
        self.network.train()
        self.best_weights = self._weights_on_cpu()
        if note:
            event.extra["notes"] = [note]
        return tick

    def _train_step(self, optimizer, gens) -> float:
        """One optimizer step over this process's shards (gradients summed over shards and processes);
        returns the mean loss of the shards."""
        optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for k, (sampler, gen) in enumerate(zip(self.samplers, gens)):
            last = k == len(gens) - 1
            # DDP all-reduces during the last shard's backward only; earlier shards just accumulate.
            sync = contextlib.nullcontext() if last or not self.group.active else self.train_network.no_sync()
            with sync:
                batch = self._to_device(sampler.batch(self.shard_size))
                loss = self._loss(self.train_network, batch, gen) / len(gens)
                (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
            total += loss.item()
        if self.scaler is not None:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()
        return total

    def _record(self, val_loss, train_loss, optimizer):
        state = self.state
        if not math.isfinite(val_loss):
            return
        if state.best_val_loss is None or val_loss < state.best_val_loss:
            state.best_val_loss = val_loss
            self.best_weights = self._weights_on_cpu()
        for key, value in (("step", state.step), ("train_loss", train_loss), ("val_loss", val_loss),
                           ("lr", optimizer.param_groups[0]["lr"])):
            state.history[key].append(value)

    def _weights_on_cpu(self) -> dict:
        return {k: v.detach().to("cpu", copy=True) for k, v in self.network.state_dict().items()}

    def _timed(self, event: ProgressEvent, tick: float, start_elapsed: float) -> ProgressEvent:
        """Count the time since ``tick`` as training time and put the clock and the rate on the event."""
        self.state.elapsed += time.perf_counter() - tick
        event.elapsed = self.state.elapsed
        run_time = max(self.state.elapsed - start_elapsed, 1e-9)
        event.patches_per_second = (self.state.step - self._first_step) * self.config.batch / run_time
        return event

    def _event(self, state, max_steps, recent, val_loss, optimizer, ending):
        return ProgressEvent(
            step=state.step, max_steps=max_steps, epoch=state.step // self.config.steps_per_epoch,
            train_loss=float(np.mean(recent)), val_loss=val_loss, best_val_loss=state.best_val_loss,
            lr=optimizer.param_groups[0]["lr"], elapsed=state.elapsed,
            patches_per_second=0.0,  # set by _timed
            done=ending, stopped=ending and self._stop_requested,
        )
