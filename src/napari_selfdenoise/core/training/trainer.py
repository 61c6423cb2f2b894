"""The Trainer: a generator of progress events that trains any registered method.

Front ends (widget, CLI, tests) iterate over ``Trainer.run()``; each event says where training is.
``stop()`` ends it cleanly at the next step; the best-validation weights are kept either way.

Under ``torchrun`` (an initialised process group, see ``distributed``) each process trains its shards
of the global batch through DistributedDataParallel; rank 0 validates and broadcasts the loss, and the
end of training (budget, time limit, stop) is agreed by all processes at every step.

The host never waits for the device in a step: the next batches are drawn in a background thread
(``patches.Prefetcher``, pinned memory and asynchronous copies on CUDA), losses stay on the device and are
read every few steps and at validations, and the best weights are copied on the device. On an
out-of-memory error a step is retried in twice as many passes (the same batch, so the same training).
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

from ..config import TrainConfig
from ..data.patches import PatchSampler, Prefetcher, split_regions, validation_patch_count
from ..errors import SelfDenoiseError
from ..methods import Method
from ..nn.device import (
    CPU_BATCH,
    MPS_BATCH,
    batch_that_fits,
    configure_for_speed,
    is_out_of_memory,
    prefers_channels_last,
    release_cached_memory,
)
from ..noise import noise_curve
from . import distributed

FINISH_PATCHES = 64  # patches given to ``Method.finish`` (N-net's noise calibration: 262k pixels in 2-D)
# Under a time limit training ends early enough to leave the finishing step its time: what it costs
# (``Method.finishing_steps`` at the run's mean step time), at most this share of the limit.
FINISH_SHARE = 0.2
# On an accelerator the step losses are read (a host-device sync) every this many steps, at validations
# and at the end; events in between carry the running mean read last. On the CPU reading is free: every step.
LOSS_READ_EVERY = 20
PREFETCH_DEPTH = 3  # steps of batches drawn ahead
clock = time.perf_counter  # the clock of training time (one name, so a test can make time deterministic)


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
        self.amp_dtype = None
        if self.device.type == "cuda" and config.amp:
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        shards = self.group.world_size * config.accumulate
        self.notes: list[str] = []  # for the user, on the final event (and on the event where each arose)
        self._new_notes: list[str] = []
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
        if config.batch is None:  # chosen for the device, then kept in the config (and the model file)
            config.batch = self._default_batch(shards, sources[0].shape[1])
            if self.device.type != "cpu":  # the CPU default is what it always was: nothing to say
                self.notes.append(f"batch {config.batch} chosen for {self.device}")
        if config.batch % shards:
            raise SelfDenoiseError(
                f"the batch ({config.batch}, the global batch of all processes) must be a multiple of "
                f"processes x accumulate = {self.group.world_size} x {config.accumulate} = {shards}")
        self.shard_size = config.batch // shards
        self.passes = 1  # forward/backward passes per shard: doubled on each out-of-memory error
        self._stop_requested = False
        self.running = False  # True while run() holds the network on its training device
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

    def _default_batch(self, shards: int, channels: int) -> int:
        """The batch when the user gave none: the CPU default; on CUDA the largest power of two that fits
        in half the free memory, measured with one probe step (not under torchrun: every process must
        agree, so it takes the fixed default there); MPS a fixed default (it has no peak-memory counter)."""
        if self.device.type == "cpu":
            return -(-CPU_BATCH // shards) * shards
        if self.device.type != "cuda" or self.group.active:
            return max(MPS_BATCH, shards) // shards * shards
        probe = 4
        self.network.to(self.device)
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        before = torch.cuda.memory_allocated(self.device)
        patches = torch.randn(probe, channels, *self.patch_shape, device=self.device)
        self._loss(self.network, patches, torch.Generator().manual_seed(0)).backward()
        used = torch.cuda.max_memory_allocated(self.device) - before
        self.network.zero_grad(set_to_none=True)
        del patches
        torch.cuda.empty_cache()
        free, _ = torch.cuda.mem_get_info(self.device)
        return batch_that_fits(used / probe, free, int(np.prod(self.patch_shape)), shards)

    def _setup(self):
        configure_for_speed(self.device)
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
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        return optimizer, scheduler

    def _to_device(self, array) -> torch.Tensor:
        """A batch (numpy, or a pinned tensor from ``_host_batches``) on the device, copied asynchronously."""
        tensor = torch.from_numpy(array) if isinstance(array, np.ndarray) else array
        return tensor.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)

    def _host_batches(self) -> list:
        """One batch per shard, for the next step (runs in the prefetch thread). On CUDA in pinned memory,
        so the copy to the GPU does not make the host wait for the GPU."""
        batches = [sampler.batch(self.shard_size) for sampler in self.samplers]
        if self.device.type == "cuda":
            return [torch.from_numpy(b).pin_memory() for b in batches]
        return batches

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
        per_pass = self._per_pass()
        with torch.no_grad():  # in passes: the memory of one training pass, whatever the process count
            for start in range(0, len(self.val_patches), per_pass):
                chunk = self._to_device(self.val_patches[start : start + per_pass])
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
        self._prefetcher = Prefetcher(self._host_batches, depth=PREFETCH_DEPTH)
        try:
            yield from self._steps(optimizer, scheduler)
        finally:
            self._prefetcher.close()
            self.running = False
            self.train_network = self.network
            for group in optimizer.param_groups:  # a resumed run starts again from the rate before the decay
                group["lr"] = group.pop("decay_peak", group["lr"])
            self.state.optimizer, self.state.scheduler = optimizer.state_dict(), scheduler.state_dict()
            self.network.load_state_dict(self.best_weights)
            self.network.to("cpu", memory_format=torch.contiguous_format)
            self.best_weights = {k: v.to("cpu") for k, v in self.best_weights.items()}

    def _steps(self, optimizer, scheduler):
        config, state = self.config, self.state
        torch.manual_seed(config.seed + state.step)
        gens = [torch.Generator().manual_seed(torch_seed) for _, torch_seed in self.shard_seeds]
        max_steps = config.max_steps
        if max_steps is not None and state.step > 0:
            max_steps += state.step  # a resumed run trains for the budget again
        recent = deque(maxlen=config.steps_per_epoch)
        unread = []  # step losses still on the device
        self._first_step, start_elapsed = state.step, state.elapsed
        run_time = 0.0  # of this run, as of the last step (every process agrees on it)
        while True:
            # Only time spent in here counts: a paused consumer (GUI pause, evaluation) costs nothing.
            tick = clock()
            self.network.train()
            decaying = self._decay_lr(optimizer, run_time, max_steps)
            loss = self._train_step(optimizer, gens, self._prefetcher.get())
            state.step += 1
            run_time = state.elapsed + clock() - tick - start_elapsed
            out_of_time = config.time_limit is not None and self._out_of_time(run_time)
            if self.group.active:  # one agreement per step: the mean loss and time, whether any process must stop
                total, late, stop, times = distributed.sum_over_processes(
                    [float(loss), out_of_time, self._stop_requested, run_time])
                loss, out_of_time, run_time = total / self.group.world_size, late > 0, times / self.group.world_size
                self._stop_requested = self._stop_requested or stop > 0
            finished = (max_steps is not None and state.step >= max_steps) or out_of_time
            ending = finished or self._stop_requested
            validating = state.step % config.steps_per_epoch == 0 or ending
            unread.append(loss)
            if self.device.type == "cpu" or self.group.active or validating or not recent or \
                    state.step % LOSS_READ_EVERY == 0:
                recent.extend(_read_losses(unread))
                unread.clear()
            val_loss = None
            if validating:
                val_loss = self.validate()
                if not decaying:
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
                tick = clock()
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

    def _decay_lr(self, optimizer, run_time: float, max_steps: int | None) -> bool:
        """Set the rate of the step about to be taken, after ``run_time`` seconds of this run: cosine from its
        value towards 0 over the last ``lr_decay`` of this run's budget (by steps or by time, whichever is
        further along). True once decaying."""
        share = self.config.lr_decay
        if not share:
            return False
        done = 0.0
        if max_steps is not None:
            done = (self.state.step - self._first_step) / max(max_steps - self._first_step, 1)
        if self.config.time_limit is not None:
            done = max(done, run_time / self._training_time(run_time))
        into = (done - (1 - share)) / share
        if into < 0:
            return False
        for group in optimizer.param_groups:
            peak = group.setdefault("decay_peak", group["lr"])
            group["lr"] = peak * 0.5 * (1 + math.cos(math.pi * min(into, 1.0)))
        return True

    def _out_of_time(self, run_time: float) -> bool:
        """Whether training must end after ``run_time`` seconds of this run."""
        return run_time >= self._training_time(run_time)

    def _training_time(self, run_time: float) -> float:
        """The seconds this run trains for: the time limit less what the finishing step will need (its
        steps at the mean step time so far, after ``run_time`` seconds)."""
        reserve = 0.0
        if self.method.finishing:
            step_time = run_time / max(self.state.step - self._first_step, 1)
            reserve = min(FINISH_SHARE * self.config.time_limit, self.method.finishing_steps * step_time)
        return self.config.time_limit - reserve

    def _finish(self, event: ProgressEvent, tick: float, start_elapsed: float):
        """The method's finishing step on the best weights, which it may change (they stay the best).
        First yields a copy of ``event`` (not done) whose ``extra["stage"]`` says what is being done, then
        copies with ``extra["stage_progress"]`` = (done, total) as it goes; under a time limit the step
        gets the time left of it. Returns the clock's new start for the time that ``event`` will count."""
        if not self.method.finishing:
            return tick
        stage = {"stage": self.method.finishing}
        announce = dataclasses.replace(event, done=False, stopped=False, extra=stage)
        yield self._timed(announce, tick, start_elapsed)
        tick = clock()
        limit = self.config.time_limit
        # seconds left: this run's time counted so far, and the time since ``tick`` (rebound after each yield)
        time_left = None if limit is None else \
            lambda: limit - (self.state.elapsed - start_elapsed) - (clock() - tick)
        self.network.load_state_dict(self.best_weights)
        sampler = PatchSampler(self.sources, self.regions, self.patch_shape, self.normalization, self.config.seed + 2)
        patches = self._to_device(sampler.fixed_set(FINISH_PATCHES))  # from everywhere: train and validation
        gen = torch.Generator().manual_seed(self.config.seed + 54321)
        steps = self.method.finish(self.network, patches, gen, time_left)
        while True:
            try:
                done, total = next(steps)
            except StopIteration as end:
                note = end.value
                break
            progress = dataclasses.replace(announce, extra={**stage, "stage_progress": (done, total)})
            yield self._timed(progress, tick, start_elapsed)
            tick = clock()
        self.network.train()
        self.best_weights = self._weights_copy()
        if note:
            event.extra.setdefault("notes", []).append(note)
        return tick

    def _train_step(self, optimizer, gens, batches) -> torch.Tensor:
        """One optimizer step over this process's shards (gradients summed over shards and processes);
        returns the mean loss of the shards, on the device. Out of memory: the same step again in twice
        as many passes per shard."""
        while True:
            try:
                return self._accumulate(optimizer, gens, batches)
            except Exception as error:  # only out-of-memory errors are handled
                if not is_out_of_memory(error):
                    raise
                optimizer.zero_grad(set_to_none=True)
                self._back_off(error)

    def _accumulate(self, optimizer, gens, batches) -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.device)
        per_pass = self._per_pass()
        for k, (batch, gen) in enumerate(zip(batches, gens)):
            for start in range(0, self.shard_size, per_pass):
                last = k == len(gens) - 1 and start + per_pass >= self.shard_size
                # DDP all-reduces during the last pass's backward only; earlier passes just accumulate.
                sync = contextlib.nullcontext() if last or not self.group.active else self.train_network.no_sync()
                with sync:
                    chunk = self._to_device(batch[start : start + per_pass])
                    share = len(chunk) / self.shard_size / len(gens)
                    loss = self._loss(self.train_network, chunk, gen) * share
                    (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
                total += loss.detach().float()
        if self.scaler is not None:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()
        return total

    def _per_pass(self) -> int:
        """Patches per forward/backward pass: the shard, or a part of it after out-of-memory errors."""
        return -(-self.shard_size // self.passes)

    def _back_off(self, error: BaseException) -> None:
        """After an out-of-memory error: twice as many passes of half the patches, or a clear error."""
        per_pass = self._per_pass()
        where = self.device.type.upper() if self.device.type != "cpu" else "CPU"
        if self.group.active or per_pass <= 1:
            advice = "use a larger --accumulate or a smaller --batch" if self.group.active else \
                "use a smaller --patch, a smaller network, or another device"
            raise SelfDenoiseError(f"out of {where} memory with {per_pass} patch(es) per pass; {advice}") from error
        self.passes *= 2
        release_cached_memory(self.device)
        smaller = self._per_pass()
        note = (f"out of {where} memory with {per_pass} patches per pass: each step now runs in passes of "
                f"{smaller} (the same batch of {self.config.batch})")
        self.notes.append(note)
        self._new_notes.append(note)

    def _record(self, val_loss, train_loss, optimizer):
        state = self.state
        if not math.isfinite(val_loss):
            return
        if state.best_val_loss is None or val_loss < state.best_val_loss:
            state.best_val_loss = val_loss
            self.best_weights = self._weights_copy()
        for key, value in (("step", state.step), ("train_loss", train_loss), ("val_loss", val_loss),
                           ("lr", optimizer.param_groups[0]["lr"])):
            state.history[key].append(value)

    def _weights_copy(self) -> dict:
        """A copy of the weights where they are (on the device: no wait for the device; moved to the CPU
        when the run ends)."""
        return {k: v.detach().clone() for k, v in self.network.state_dict().items()}

    def _timed(self, event: ProgressEvent, tick: float, start_elapsed: float) -> ProgressEvent:
        """Count the time since ``tick`` as training time and put the clock and the rate on the event."""
        self.state.elapsed += clock() - tick
        event.elapsed = self.state.elapsed
        run_time = max(self.state.elapsed - start_elapsed, 1e-9)
        event.patches_per_second = (self.state.step - self._first_step) * self.config.batch / run_time
        return event

    def _event(self, state, max_steps, recent, val_loss, optimizer, ending):
        # Notes: the new ones on this step's event; all of them on the final one (the CLI prints those).
        notes, self._new_notes = (list(self.notes) if ending else self._new_notes), []
        return ProgressEvent(
            step=state.step, max_steps=max_steps, epoch=state.step // self.config.steps_per_epoch,
            train_loss=float(np.mean(recent)), val_loss=val_loss, best_val_loss=state.best_val_loss,
            lr=optimizer.param_groups[0]["lr"], elapsed=state.elapsed,
            patches_per_second=0.0,  # set by _timed
            done=ending, stopped=ending and self._stop_requested, extra={"notes": notes} if notes else {},
        )


def _read_losses(values: list) -> list[float]:
    """Step losses (floats, or tensors on the device) as floats: one host-device sync for all of them."""
    if all(isinstance(v, float) for v in values):
        return list(values)
    return torch.stack(values).cpu().tolist()
