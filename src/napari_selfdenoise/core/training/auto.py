"""The ``auto`` method: race the candidates on one self-supervised score, keep the best, estimate its quality.

Every candidate, the calibrated classical filter too, is scored on the same held-out pixels (``scoring``:
the J-invariant masked-pixel loss, the true error plus the noise variance); the winner's quality is
estimated without ground truth (``quality``: its score minus the noise variance).

Racing (successive halving). In "budget units" (one unit = the user's step budget, or the share of the
time limit left after the classic filter that fits the plan): every candidate trains to the first rung
(1/8 of a unit with 3-4 candidates), is scored, the clearly worse ones (paired difference more than
``scoring.CLEARLY_WORSE_Z`` standard errors) and the worst half are dropped; the survivors go on to the next
rung (1/4), and the last one left gets the rest of the unit. With a step budget the winner trains exactly the
budget (three candidates cost 1.375 budgets in all); with a time limit the whole race fits in it.

Shared noise. Blind radius 0 (the default) lets auto decide: when the noise looks shared by neighbouring
pixels (``shared_noise_ratio``), the classical filter, every candidate and the score hide squares of radius
``SHARED_NOISE_RADIUS`` around each masked pixel (with 0 the loss takes shared noise for signal), and a
note says so. With any blind radius a network replaces the classical filter only when it scores more than
``SHARED_NOISE_MARGIN`` below it (``network_wins``).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..config import TrainConfig
from ..data.normalize import Normalization
from ..errors import SelfDenoiseError
from ..methods.blind_radius import check_blind_radius, shared_noise_ratio
from ..methods.options import BLIND_RADIUS, MethodChoice
from .quality import (
    QualityEstimate,
    noise_variance_from_data,
    noise_variance_from_nnet,
    quality_estimate,
    shared_noise_of,
)
from .scoring import Evaluation, HeldOut, classic_crop, classic_predictor, clearly_worse, network_predictor

AUTO = "auto"
CLASSIC = "classic"
DEFAULT_CANDIDATES = ("n2s", "nnet", "n2same")

# Networks score far worse than no denoising at all for their first few dozen steps: no rung before this
# many steps (or half the budget, when that is less).
MIN_RUNG_STEPS = 50

# Blind radius 0 (the default) lets auto decide: this radius when the noise looks shared by neighbouring
# pixels. With 0 the loss takes shared noise for signal: on FMD's wide-field image (neighbour correlation
# 0.6) auto ended 0.8 dB BELOW its input, where radius 2 gains 7-8 dB (BENCHMARKS.md, B2).
SHARED_NOISE_RADIUS = 2
# With a blind radius the score favours a network over the classical filter: the noise is still shared a
# little beyond the radius, and a network learns to predict that part too (FMD wide-field, correlation
# 0.15 / 0.11 at 3 / 4 pixels along X). Measured there at 2000 steps: n2s scored 2.3 % below the classic
# filter (paired z 6.4), yet its J-invariant prediction is 0.2 dB worse than the filter's against the
# 50-frame average, and its output 2.1 dB worse than the filter's (26.46 vs 28.56 dB, BENCHMARKS.md, B2).
SHARED_NOISE_MARGIN = 0.05

# Options of the auto method itself; every other option goes to each candidate that has it, and an option
# named after a candidate, with a mapping as its value, gives that candidate's own options.
AUTO_OPTIONS = ("candidates",)
# The method picker's entry; of the options, the widget shows the one every candidate shares.
CHOICE = MethodChoice(AUTO, f"Auto (recommended): a classical filter first, then {', '.join(DEFAULT_CANDIDATES[:-1])} "
                            f"and {DEFAULT_CANDIDATES[-1]} raced on one self-supervised score within the budget; "
                            "the best is kept", (BLIND_RADIUS,))


# --------------------------------------------------------------------------- records


@dataclass
class CandidateScore:
    """One row of the score table: ``status`` is "running", "dropped" or "winner"."""

    method: str
    score: float | None = None  # the masked-pixel loss on the held-out pixels, squared image units
    stderr: float | None = None
    steps: int = 0
    status: str = "running"
    elapsed: float = 0.0  # seconds spent on this candidate

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> CandidateScore:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class AutoResult:
    """What ``auto`` chose and why: stored in the model file under "auto", shown by ``info``."""

    winner: str
    scores: list[CandidateScore]
    estimate: QualityEstimate | None = None
    # The classical filter (denoiser, parameter_name, parameter, normalization): applied when it won.
    classic: dict | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"winner": self.winner, "scores": [s.to_dict() for s in self.scores],
                "estimate": self.estimate.to_dict() if self.estimate else None, "classic": self.classic,
                "notes": list(self.notes)}

    @classmethod
    def from_dict(cls, data: dict) -> AutoResult:
        estimate = data.get("estimate")
        return cls(str(data["winner"]), [CandidateScore.from_dict(s) for s in data.get("scores", [])],
                   QualityEstimate.from_dict(estimate) if estimate else None, data.get("classic"),
                   list(data.get("notes", [])))

    def table(self) -> str:
        """The score table as text lines (CLI summary, ``info``)."""
        best = min((s.score for s in self.scores if s.score is not None), default=None)
        lines = []
        for row in self.scores:
            score = "-" if row.score is None else f"{row.score:.5g}"
            if row.score is not None and row.stderr:
                score += f" ± {row.stderr:.2g}"
            gap = f" (+{100 * (row.score / best - 1):.1f} %)" if row.score is not None and best and \
                row.score > best else ""
            steps = f"{row.steps} steps" if row.method != CLASSIC else "calibrated"
            lines.append(f"{row.method:<8} {score}{gap}, {steps}, {row.status}")
        return "\n".join(lines)


def network_wins(network: Evaluation, classic: Evaluation, blind_radius: int) -> bool:
    """Whether the race's network replaces the classical filter: a lower score, and with a blind radius
    lower by more than ``SHARED_NOISE_MARGIN``."""
    margin = SHARED_NOISE_MARGIN if blind_radius else 0.0
    return network.score < (1 - margin) * classic.score


def classic_kept_note(calibration, network_name: str, evaluations: dict[str, Evaluation]) -> str:
    """Why the model applies the classical filter and not the race's network ``network_name``."""
    filter_name = f"the classical filter ({calibration.denoiser}, {calibration.parameter_name} {calibration.parameter:g})"
    kept = f"the model applies it ({network_name}'s network is kept too)"
    lower = 1 - evaluations[network_name].score / evaluations[CLASSIC].score
    if lower <= 0:
        return f"{filter_name} scored best: {kept}"
    return (f"{network_name} scored {100 * lower:.1f} % below {filter_name}, less than the "
            f"{100 * SHARED_NOISE_MARGIN:g} % a network needs with a blind radius (there the score favours "
            f"networks: they also learn the noise shared beyond the radius): {kept}")


def table_dicts(rows: list[CandidateScore]) -> list[dict]:
    """The live score table of an event: ``event.extra["scores"]``."""
    return [row.to_dict() for row in rows]


# --------------------------------------------------------------------------- options and plan


def split_options(options: dict, candidates) -> dict[str, dict]:
    """Each candidate's method options from the auto options (``candidates`` removed); an option that
    no candidate has is a mistake."""
    from ..methods import METHODS

    own = {k: v for k, v in options.items() if k in candidates and isinstance(v, dict)}
    shared = {k: v for k, v in options.items() if k not in AUTO_OPTIONS and k not in own}
    per = {name: {**{k: v for k, v in shared.items() if k in METHODS[name].defaults}, **own.get(name, {})}
           for name in candidates}
    unknown = sorted(k for k in shared if not any(k in METHODS[n].defaults for n in candidates))
    if unknown:
        raise SelfDenoiseError(f"method 'auto' has no option {', '.join(unknown)} (none of its candidates "
                               f"{', '.join(candidates)} has it); its own option is candidates, and "
                               f"NAME={{...}} gives one candidate's options")
    return per


def check_candidates(options: dict) -> tuple[str, ...]:
    from ..methods import METHODS

    names = options.get("candidates", DEFAULT_CANDIDATES)
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    names = tuple(dict.fromkeys(str(n) for n in names))
    bad = [n for n in names if n not in METHODS]
    if not names or bad:
        raise SelfDenoiseError(f"auto option candidates must name neural methods ({', '.join(METHODS)}); "
                               f"got {', '.join(bad) or 'none'}")
    return names


def rung_fractions(count: int) -> list[float]:
    """Cumulative budget fractions at which candidates are compared: the last at 1/4, each earlier one
    half the next, one rung per halving (2 candidates: [1/4]; 3-4: [1/8, 1/4]; 5-8: [1/16, 1/8, 1/4])."""
    rungs = max(1, math.ceil(math.log2(count))) if count > 1 else 0
    return [0.25 / 2 ** (rungs - 1 - r) for r in range(rungs)]


def planned_units(count: int) -> float:
    """Budget units the race costs when it halves as planned (the winner's own unit included)."""
    total, alive, previous = 0.0, count, 0.0
    for fraction in rung_fractions(count):
        total += alive * (fraction - previous)
        alive, previous = math.ceil(alive / 2), fraction
    return total + (1.0 - previous)


def rung_steps(fraction: float, budget: int) -> int:
    """The step count a candidate has trained at budget ``fraction`` (1: the whole budget): a rung is at
    least ``MIN_RUNG_STEPS`` steps (at most half the budget)."""
    if fraction >= 1:
        return budget
    return min(max(round(fraction * budget), MIN_RUNG_STEPS), max(1, budget // 2))


def planned_steps(count: int, budget: int) -> int:
    """Steps of all candidates together when the race halves as planned."""
    total, alive, previous = 0, count, 0
    for fraction in rung_fractions(count):
        target = rung_steps(fraction, budget)
        total += alive * (target - previous)
        alive, previous = math.ceil(alive / 2), target
    return total + budget - previous


# --------------------------------------------------------------------------- the race


class Race:
    """Trains the candidates of ``config`` (method "auto") on canonical ``sources`` by successive halving.

    ``run()`` is a generator of ``ProgressEvent``s (the auto event conventions: see ``Denoiser.train``) and
    returns the ``AutoResult``; ``self.winner`` is then the winning neural candidate (a ``Denoiser``; the
    best neural one when the classical filter won).
    """

    def __init__(self, config: TrainConfig, arrays, new_candidate: Callable[..., Any]):
        # new_candidate(config=...) makes a candidate: the Denoiser class, passed in so that this module
        # does not import denoiser.py (which imports this one).
        self.config = config
        options = dict(config.method_options)
        self.names = check_candidates(options)
        per = split_options(options, self.names)
        self.blind_radius = check_blind_radius(options.get("blind_radius", 0))
        self.candidates = {}
        for name in self.names:
            candidate_config = TrainConfig.from_dict({**config.to_dict(), "method": name,
                                                      "method_options": per[name]})
            self.candidates[name] = new_candidate(config=candidate_config)  # checks each one's options
        self.arrays, self.new_candidate = arrays, new_candidate
        self.current = None  # the candidate training now (previews use it)
        self.winner = None
        self._stop = False
        self.rows = {name: CandidateScore(name) for name in (CLASSIC, *self.names)}

    def stop(self):
        self._stop = True
        if self.current is not None:
            self.current.stop()

    def _events(self, name, start_step, plan_steps):
        """Train candidate ``name`` for its current slice; re-yield its events as auto events (not done:
        only the race's last event is). Returns the steps trained."""
        candidate, row = self.candidates[name], self.rows[name]
        self.current = candidate
        first, spent = candidate.state.step, self.spent
        for event in candidate.train(self.arrays):
            row.steps = candidate.state.step
            self.notes += [n for n in event.extra.get("notes", []) if event.done]
            extra = {**event.extra, "candidate": name, "scores": table_dicts(list(self.rows.values()))}
            extra.pop("notes", None)
            yield self._timed(dataclasses.replace(event, step=start_step + candidate.state.step - first,
                                                  max_steps=plan_steps, done=False, stopped=False, extra=extra))
            self._resume()
            if self._stop:
                candidate.stop()
        row.elapsed += self.spent - spent
        return candidate.state.step - first

    @property
    def spent(self) -> float:
        """Seconds spent inside ``run`` (a paused consumer costs nothing, as in the Trainer)."""
        return self._spent + time.perf_counter() - self._since

    def _timed(self, event):
        """Stamp ``event`` with the race's clock; the clock stops until the consumer asks for more."""
        self._spent = self.spent
        event.elapsed = self._spent
        self._since = float("inf")  # set again by _resume() when run() goes on
        return event

    def _resume(self):
        self._since = time.perf_counter()

    def run(self):
        from ..methods import get_method
        from ..methods.classic import DEFAULT_DENOISERS, calibration_steps
        from ..steps import drain
        from .trainer import ProgressEvent

        config = self.config
        self._spent, self._since, self.notes = 0.0, time.perf_counter(), []
        sources = [layout.to_canonical(a) for layout, a in self.arrays_layouts()]
        self._choose_blind_radius(sources)
        # the same held-out pixels for all: the Trainer's validation split, on the networks' size grid
        held = HeldOut.from_sources(sources, config, self._multiple(sources), self.blind_radius)

        # 1. the classical filter: seconds, the first result
        crop = classic_crop(sources[0])
        axes = "SCYX" if crop.ndim == 4 else "SCZYX"
        calibration = drain(calibration_steps(crop, axes, DEFAULT_DENOISERS, blind_radius=self.blind_radius))
        classic_norm = Normalization.fit(crop)
        evaluations = {CLASSIC: held.evaluate(classic_predictor(calibration, classic_norm))}
        self._score(CLASSIC, evaluations[CLASSIC])
        classic = {"denoiser": calibration.denoiser, "parameter_name": calibration.parameter_name,
                   "parameter": calibration.parameter, "normalization": classic_norm.to_dict(),
                   "blind_radius": self.blind_radius}
        units = planned_units(len(self.names))
        step_unit = config.max_steps
        plan_steps = planned_steps(len(self.names), step_unit) if step_unit else None
        time_unit = None if config.time_limit is None else max(config.time_limit - self.spent, 1e-3) / units
        yield self._timed(ProgressEvent(
            step=0, max_steps=plan_steps, epoch=0, train_loss=float("nan"), val_loss=None, best_val_loss=None,
            lr=config.lr, elapsed=0.0, patches_per_second=0.0,
            extra={"candidate": CLASSIC, "classic": calibration, "classic_options": classic,
                   "scores": table_dicts(list(self.rows.values()))}))
        self._resume()

        # 2. successive halving: train every survivor to the rung, score, drop
        rungs = rung_fractions(len(self.names))
        alive, done_steps, previous = list(self.names), 0, 0.0
        for number, fraction in enumerate(rungs):
            for name in alive:
                candidate = self.candidates[name]
                if candidate.method.finishing:  # N-net calibrates its noise model once, as the winner
                    candidate.method = get_method(name, {**candidate.config.method_options, "calibrate": False})
                if self._set_slice(candidate, previous, fraction, step_unit, time_unit):
                    done_steps += yield from self._events(name, done_steps, plan_steps)
                evaluations[name] = held.evaluate(network_predictor(candidate))
                self._score(name, evaluations[name])
                if self._stop:
                    break
            if self._stop:
                break
            alive = self._drop([n for n in alive if n in evaluations],
                               evaluations, 1 if number == len(rungs) - 1 else math.ceil(len(alive) / 2))
            previous = fraction
        # 3. the best survivor (stopped: the best scored so far) gets the rest of the budget
        scored = [n for n in alive if n in evaluations]
        if len(self.names) == 1:  # one candidate: no rung, it trains the whole budget
            winner_name = self.names[0]
        elif scored:
            winner_name = min(scored, key=lambda n: evaluations[n].score)
        else:  # stopped before any network was scored: the one that trained
            winner_name = next((n for n in self.names if self.candidates[n].network is not None), self.names[0])
        winner = self.candidates[winner_name]
        winner.method = get_method(winner_name, winner.config.method_options)
        if not self._stop and self._set_slice(winner, previous, 1.0, step_unit, time_unit, config.time_limit):
            done_steps += yield from self._events(winner_name, done_steps, plan_steps)
        if winner.network is None:
            raise SelfDenoiseError("training was stopped before any network was built")
        evaluations[winner_name] = held.evaluate(network_predictor(winner))  # as it ends (stopped: as it is)
        self._score(winner_name, evaluations[winner_name])
        self.winner = winner
        network_won = network_wins(evaluations[winner_name], evaluations[CLASSIC], self.blind_radius)
        best = winner_name if network_won else CLASSIC
        for name, row in self.rows.items():
            row.status = "winner" if name == best else "dropped"
        notes = [] if network_won else [classic_kept_note(calibration, winner_name, evaluations)]
        estimate = self._estimate(best, evaluations[best], held, sources)
        result = AutoResult(best, list(self.rows.values()), estimate, classic, notes)
        self.result, self.current = result, None
        history = winner.history
        yield self._timed(ProgressEvent(
            step=done_steps, max_steps=plan_steps, epoch=winner.state.step // config.steps_per_epoch,
            train_loss=history["train_loss"][-1] if history["train_loss"] else float("nan"),
            val_loss=winner.state.best_val_loss, best_val_loss=winner.state.best_val_loss, lr=config.lr,
            elapsed=0.0, patches_per_second=0.0, done=True, stopped=self._stop,
            extra={"candidate": best, "scores": table_dicts(result.scores), "auto": result,
                   "notes": [*self.notes, *notes]}))
        return result

    # ---- helpers of run()
    def arrays_layouts(self):
        from ..data.checks import check_same_axes_shape

        layouts = check_same_axes_shape(self.arrays, self.config.axes)
        return list(zip(layouts, self.arrays))

    def _choose_blind_radius(self, sources) -> None:
        """Blind radius 0 means "decide from the data": when the noise looks shared by neighbouring pixels,
        the classical filter, every candidate and the score hide squares of ``SHARED_NOISE_RADIUS``."""
        if self.blind_radius:
            return
        source = sources[0]
        ratio = shared_noise_ratio(source, "SCYX" if source.ndim == 4 else "SCZYX")
        if ratio is None:
            return
        self.blind_radius = SHARED_NOISE_RADIUS
        for name, candidate in self.candidates.items():
            options = {**candidate.config.method_options, "blind_radius": SHARED_NOISE_RADIUS}
            self.candidates[name] = self.new_candidate(
                config=TrainConfig.from_dict({**candidate.config.to_dict(), "method_options": options}))
        self.notes.append(f"the noise looks shared by neighbouring pixels (neighbour-difference ratio {ratio:.2f}; "
                          f"independent noise gives about 0.85-1): every method hid a blind radius of "
                          f"{SHARED_NOISE_RADIUS} around each masked pixel (set blind_radius to choose it yourself)")

    def _multiple(self, sources) -> tuple[int, ...]:
        """What the candidates' networks need each crop edge to be a multiple of ([Z,] Y, X)."""
        from ..nn.networks import auto_z_levels

        depth = self.config.depth
        if sources[0].ndim == 4:
            return (2**depth, 2**depth)
        planes = min(s.shape[2] for s in sources)
        levels = auto_z_levels(planes, depth) if self.config.z_levels is None else int(self.config.z_levels)
        return (2**levels, 2**depth, 2**depth)

    def _set_slice(self, candidate, start: float, end: float, step_unit, time_unit, total_time=None) -> bool:
        """Budget the next ``candidate.train`` call from budget fraction ``start`` to ``end`` (a resumed run
        trains for its budget again); ``total_time`` (the winner's last slice): the time left of it.
        False when there is nothing to train (the rung floor put two rungs at one step count)."""
        steps = None
        if step_unit is not None:
            steps = rung_steps(end, step_unit) - candidate.state.step
            if steps < 1:
                return False
        seconds = None if time_unit is None else max(1e-3, (end - start) * time_unit)
        if total_time is not None:
            seconds = total_time - self.spent
            if seconds <= 0:  # the rungs (and scoring them) used the whole time limit
                return False
        candidate.config.steps, candidate.config.epochs, candidate.config.time_limit = steps, None, seconds
        # the rate decays over the end of the whole budget, so in the winner's last slice only (a candidate
        # scored at a rung goes on from its rate): the same steps or seconds, as a share of the slice
        stretch = 0.0
        if end == 1:
            stretch = max(step_unit / steps if steps else 0.0, total_time / seconds if total_time else 0.0)
        candidate.config.lr_decay = min(1.0, self.config.lr_decay * stretch)
        return True

    def _score(self, name, evaluation: Evaluation):
        self.rows[name].score, self.rows[name].stderr = evaluation.score, evaluation.stderr
        if name != CLASSIC:
            self.rows[name].steps = self.candidates[name].state.step

    def _drop(self, alive, evaluations, keep: int) -> list[str]:
        ranked = sorted(alive, key=lambda n: evaluations[n].score)
        best = evaluations[ranked[0]]
        survivors = [n for n in ranked[:keep] if n == ranked[0] or not clearly_worse(evaluations[n], best)]
        for name in alive:
            if name not in survivors:
                self.rows[name].status = "dropped"
        if self.rows[CLASSIC].status == "running" and clearly_worse(evaluations[CLASSIC], best):
            self.rows[CLASSIC].status = "dropped"
        return survivors

    def _estimate(self, best, evaluation, held, sources) -> QualityEstimate:
        """The winner's quality estimate; the noise variance from N-net's calibrated model when it won."""
        shared = shared_noise_of(sources)
        variance, stderr, mse_stderr = noise_variance_from_data(held.crops, errors=evaluation.errors)
        if best == "nnet" and self.winner.method.finishing and self.rows["nnet"].steps > 0:
            learned, learned_stderr = noise_variance_from_nnet(self.winner, held.crops)
            # how far the two estimates disagree counts as an error of the learned one (a short run's
            # noise model can be tens of percent off)
            stderr = math.sqrt(learned_stderr**2 + (learned - variance) ** 2)
            return quality_estimate(evaluation, learned, stderr, "nnet", shared,
                                    math.sqrt(evaluation.stderr**2 + stderr**2))
        return quality_estimate(evaluation, variance, stderr, "data", shared, mse_stderr)
