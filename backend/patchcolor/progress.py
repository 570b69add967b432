"""Progress of a job: steps inside each network's forward pass, a text saying what runs, the time left.

A job reports ``progress(stage, fraction)`` (:data:`ProgressFn`): ``stage`` is one of the protocol's stage names
(``patchcolor_client.protocol.STAGES``), ``fraction`` in [0, 1] within it. The name is passed as a :class:`Stage`,
a ``str`` that also carries ``text`` (what runs now, e.g. "Detecting objects: backbone 12/34") and ``eta_s``
(estimated seconds left for the whole job, None until the Pipeline has timed a job like it), so callers that
only want the name use it as the string it is.

Long forward passes (the detector's backbone, a colorizer batch) report from inside: :func:`forward_progress`
puts forward pre-hooks on the network's blocks (:func:`network_blocks`, or a detector's own list with labels)
and reports the share of the forward done when each block starts. Shares are equal per block until one whole
forward of that network has been timed, then the measured time of each block (kept per network).
Every report is also a cancellation point (the job's ``cancelled`` is polled and :class:`~patchcolor.errors.Cancelled`
raised from inside the forward); sub-step events closer than :data:`MIN_STEP_S` to the last one are not sent.

The remaining time (:class:`JobProgress`) comes from the last finished job of the same Pipeline: each stage's
seconds per unit of work (prepare, fuse, finish: output megapixels; segment: detector runs; colorize: network
inputs, per colorizer and input size), model loading excluded; inside the running stage, once it has run
:data:`OWN_RATE_AFTER_S` and done 5 %, its own pace.
"""
from __future__ import annotations

import contextlib
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Callable, Hashable, Iterator, Sequence

from torch import nn

from patchcolor_client.protocol import STAGES

from .errors import Cancelled

ProgressFn = Callable[[str, float], None]   # (stage name — a Stage —, fraction 0..1 within the stage)
CancelFn = Callable[[], bool]               # True -> stop at the next progress call (raises Cancelled)
StepFn = Callable[[float, str], None]       # (fraction 0..1 of a forward pass done, label of the running block)
Clock = Callable[[], float]                 # seconds, monotonic

#: sub-step events (inside a stage) closer together than this are not sent (the cancel check still runs)
MIN_STEP_S = 0.1
#: the running stage's own pace replaces the last job's once it has run this long and done 5 %
OWN_RATE_AFTER_S = 1.0

STAGE_TEXT = {"prepare": "Preparing the image", "segment": "Detecting objects", "colorize": "Colorizing",
              "fuse": "Fusing the object colours", "finish": "Finishing"}


class Stage(str):
    """A stage name (``str``) with ``text``: what runs now, and ``eta_s``: estimated seconds left in the job
    (None: no estimate yet)."""

    text: str
    eta_s: float | None

    def __new__(cls, name: str, text: str = "", eta_s: float | None = None) -> "Stage":
        self = super().__new__(cls, name)
        self.text = text or STAGE_TEXT.get(name, name)
        self.eta_s = eta_s
        return self


# ------------------------------------------------------------------------------------- inside a forward pass
def network_blocks(model: nn.Module, parts: int = 24) -> list[tuple[str, nn.Module]]:
    """The blocks whose start is reported: ``model``'s children in registration order, each child holding more
    than 1/``parts`` of the parameters replaced by its own children (recursively), and so is every ModuleList /
    ModuleDict (never called itself). Returns (path, module)."""
    total = sum(p.numel() for p in model.parameters()) or 1

    def split(prefix: str, module: nn.Module) -> list[tuple[str, nn.Module]]:
        out: list[tuple[str, nn.Module]] = []
        for name, child in module.named_children():
            path = f"{prefix}{name}"
            size = sum(p.numel() for p in child.parameters())
            if (size * parts > total or isinstance(child, (nn.ModuleList, nn.ModuleDict))) \
                    and any(True for _ in child.children()):
                out += split(path + ".", child)
            else:
                out.append((path, child))
        return out

    return split("", model) or [("", model)]


class NetworkSteps:
    """The blocks of one network (label per block) and the share of a forward each call of one takes, measured
    on the last whole forward (equal shares before). One per network (:func:`steps_of`); reports are per thread."""

    def __init__(self, model: nn.Module, blocks: Sequence[tuple[str, str]] | None = None, clock: Clock | None = None):
        """blocks: (sub-module path, label) in execution order; None: :func:`network_blocks`, no labels."""
        pairs = [(p, "") for p, _ in network_blocks(model)] if blocks is None else list(blocks)
        self.model = model
        self.paths = [p for p, _ in pairs]
        self.labels = [lab for _, lab in pairs]
        self.modules = [model.get_submodule(p) if p else model for p in self.paths]
        self.shares = [1.0 / len(pairs)] * len(pairs)
        self.clock = clock or time.perf_counter
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def report(self, fn: StepFn) -> Iterator[None]:
        """While inside: each block's start calls ``fn(share of the forward done before it, its label)`` — for
        forwards run by this thread only. When a forward ends, the blocks' measured
        durations become the shares (per call: a block run k times takes 1/k of its time at each call; a block not
        run takes none). An exception from ``fn`` (a cancel) ends the forward; the hooks are removed on leaving."""
        owner = threading.get_ident()
        n = len(self.modules)
        state = {"i": -1, "t": 0.0, "done": 0.0, "seconds": [0.0] * n, "calls": [0] * n}

        def close_block(now: float) -> None:
            if state["i"] >= 0:
                state["seconds"][state["i"]] += now - state["t"]
                state["done"] += self.shares[state["i"]]

        def start(i: int) -> None:
            if threading.get_ident() != owner:
                return
            now = self.clock()
            close_block(now)
            state["i"], state["t"] = i, now
            state["calls"][i] += 1
            fn(min(state["done"], 1.0), self.labels[i])

        def end(*_: object) -> None:
            if threading.get_ident() != owner:
                return
            close_block(self.clock())
            seconds, calls = state["seconds"], state["calls"]
            total = sum(seconds)
            if total > 0:                     # a whole forward: each call's share of it, as measured
                with self._lock:
                    self.shares = [s / total / c if c else 0.0 for s, c in zip(seconds, calls)]
            state.update(i=-1, done=0.0, seconds=[0.0] * n, calls=[0] * n)

        handles = [m.register_forward_pre_hook(lambda _m, _a, i=i: start(i)) for i, m in enumerate(self.modules)]
        handles.append(self.model.register_forward_hook(end))
        try:
            yield
        finally:
            for h in handles:
                h.remove()


_STEPS: "weakref.WeakKeyDictionary[nn.Module, NetworkSteps]" = weakref.WeakKeyDictionary()
_STEPS_LOCK = threading.Lock()


def steps_of(model: nn.Module, blocks: Sequence[tuple[str, str]] | None = None) -> NetworkSteps:
    """The network's :class:`NetworkSteps` (made on first use, then kept with its measured shares)."""
    with _STEPS_LOCK:
        steps = _STEPS.get(model)
        if steps is None:
            steps = _STEPS[model] = NetworkSteps(model, blocks)
        return steps


def forward_progress(model: nn.Module, fn: StepFn | None,
                     blocks: Sequence[tuple[str, str]] | None = None) -> contextlib.AbstractContextManager:
    """Context manager: ``fn(fraction, label)`` at the start of each block of ``model``'s forwards run inside it
    (see :meth:`NetworkSteps.report`); does nothing when ``fn`` is None."""
    return contextlib.nullcontext() if fn is None else steps_of(model, blocks).report(fn)


# --------------------------------------------------------------------------------------------- a whole job
@dataclass
class StageRates:
    """Seconds per unit of work of each stage in the last finished job of a Pipeline: stage -> (kind, seconds per
    unit, units). ``kind`` says what the units are measured on (a detector, a colorizer and its input size)."""

    rates: dict[str, tuple[Hashable, float, float]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def predict(self, stage: str, kind: Hashable, units: float | None) -> float | None:
        """Seconds ``units`` of ``stage`` (None: as many as last time) should take; None if not timed yet."""
        with self.lock:
            got = self.rates.get(stage)
        if units == 0:
            return 0.0
        if got is None or got[0] != kind:
            return None
        return got[1] * (got[2] if units is None else units)


class JobProgress:
    """One job's events: the text of what runs, sub-steps (throttled), a cancel check at every call and the
    remaining time. ``work(stage, units, kind)`` declares each stage's amount of work (see :class:`StageRates`)."""

    def __init__(self, progress: ProgressFn | None, cancelled: CancelFn | None, rates: StageRates,
                 clock: Clock | None = None):
        self._progress, self._cancelled, self.rates = progress, cancelled, rates
        self.clock = clock or time.perf_counter
        self.work_units: dict[str, tuple[Hashable, float | None]] = {}
        self._seconds: dict[str, float] = {}          # stage -> seconds spent in it (loading excluded)
        self._stage: str | None = None
        self._stage_t = self._sent_t = self.clock()
        self._excluded = 0.0                          # seconds of the running stage not counted (model loading)
        self._text = ""

    def work(self, stage: str, units: float | None, kind: Hashable = None) -> None:
        """``stage`` has ``units`` of work (None: unknown yet, assume as many as the last job) measured on ``kind``."""
        self.work_units[stage] = (kind, units)

    def exclude(self, seconds: float) -> None:
        """Do not count ``seconds`` of the running stage in its rate (a model loaded on first use)."""
        self._excluded += seconds

    def stage(self, name: str, fraction: float, text: str | None = None) -> None:
        """An event that is always sent (a stage starts or ends, a batch ends). Raises Cancelled when cancelled."""
        self._event(name, fraction, text, always=True)

    def step(self, name: str, fraction: float, text: str | None = None) -> None:
        """A sub-step event: sent unless the last one went out less than MIN_STEP_S ago (cancel checked anyway)."""
        self._event(name, fraction, text, always=False)

    def _event(self, name: str, fraction: float, text: str | None, always: bool) -> None:
        if self._cancelled is not None and self._cancelled():
            raise Cancelled("the job was cancelled")
        now = self.clock()
        if name != self._stage:
            self._close_stage(now)
            self._stage, self._stage_t, self._text = name, now, ""
        if text is not None:
            self._text = text
        if self._progress is None or (not always and now - self._sent_t < MIN_STEP_S):
            return
        self._sent_t = now
        self._progress(Stage(name, self._text, self.eta(name, fraction, now)), fraction)

    def _close_stage(self, now: float) -> None:
        if self._stage is not None:
            spent = max(0.0, now - self._stage_t - self._excluded)
            self._seconds[self._stage] = self._seconds.get(self._stage, 0.0) + spent
        self._excluded = 0.0

    def eta(self, stage: str, fraction: float, now: float | None = None) -> float | None:
        """Estimated seconds left: the rest of ``stage`` (its own pace once it has one) and every later stage
        at the last job's rates. None when a stage still to run has never been timed."""
        now = self.clock() if now is None else now
        if stage not in STAGES:
            return None
        left = 0.0
        for name in STAGES[STAGES.index(stage):]:
            kind, units = self.work_units.get(name, (None, 0.0))
            if name == stage:
                ran = now - self._stage_t - self._excluded
                if ran >= OWN_RATE_AFTER_S and fraction >= 0.05:
                    left += ran * (1.0 - fraction) / fraction
                    continue
            seconds = self.rates.predict(name, kind, units)
            if seconds is None:
                return None
            left += seconds * ((1.0 - min(max(fraction, 0.0), 1.0)) if name == stage else 1.0)
        return round(left, 1)

    def finished(self) -> None:
        """The job ran to its end: its stage rates replace the Pipeline's (stages with no work keep theirs)."""
        self._close_stage(self.clock())
        self._stage = None
        with self.rates.lock:
            for name, seconds in self._seconds.items():
                kind, units = self.work_units.get(name, (None, 0.0))
                if units:
                    self.rates.rates[name] = (kind, seconds / units, units)
