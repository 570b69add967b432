"""The Colorize (Patch) dialog's preview requests, without GTK or GIMP (standard library only, unit-tested alone).

A refresh asks the backend for a DRAFT preview first (an approximate one in about a second while the image's exact
analysis is not cached yet), shows it, then asks for the EXACT preview and replaces the picture when it arrives.
When the backend already has the exact analysis it answers the draft request with the exact preview
(``res.extra["draft"]`` False) and nothing more is asked.

Threads: :meth:`PreviewFlow.request` is called on the GUI's main thread with everything the backend call needs
already read from GIMP (GIMP's PDB may only be called there); the backend calls run in a daemon thread; every
result is handed back through ``deliver`` (``GLib.idle_add`` in the plug-in) and the callbacks run on the main
thread. Each request gets a new generation number: an older generation's calls are cancelled through their
``should_cancel`` and whatever they still return is dropped, so the picture always shows the newest request. After
:meth:`PreviewFlow.close` (the dialog's OK/Cancel) no callback runs any more and nothing waits for a thread; it
returns the job of the request still running on the backend (each attempt's job id and token are made here), so the
dialog cancels it there at once instead of leaving the backend computing a preview nobody will see.

:func:`fetch_preview` is the backend call a fetch makes (no GIMP: safe in the worker thread); :func:`preview_call`
is the same request for the Preview procedure.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from .jobs import JobIds, PluginError, run_job
from .messages import BAD_PREVIEW
from .protocol import PREVIEW_SIDE

AUTO_PREVIEW_S = 2.0        # option changes refresh by themselves while the first answer came this fast


@dataclass(frozen=True)
class PreviewInputs:
    """What a preview request sends, read from GIMP on the main thread (GIMP's PDB may only be called there):
    the layer's pixels (``width`` x ``height`` in wire format ``fmt``, e.g. "rgb8") and the hint map (a
    client.HintMap; None: no hints) with its number of hints."""

    width: int
    height: int
    fmt: str
    pixels: bytes = field(repr=False)
    hints: Any = field(default=None, repr=False)
    n_hints: int = 0


@dataclass(frozen=True)
class PreviewJob:
    """One dialog preview request, read on the main thread: the inputs and the options at that moment."""

    inputs: PreviewInputs
    options: dict
    endpoint: str
    auto_start: bool


@dataclass(frozen=True)
class Attempt:
    """What a fetch is given (in the worker thread): which preview to ask for, the job id and token to send it
    with, whether to give up, and a way to show a short status text (e.g. "Starting the backend...") on the main
    thread."""

    generation: int
    draft: bool
    should_cancel: Callable[[], bool]
    note: Callable[[str], None]
    ids: JobIds = field(default_factory=JobIds.new)


@dataclass(frozen=True)
class PreviewUpdate:
    """A preview to show. ``result``: the client's ColorizeResult (8-bit proxy); ``draft``: what the backend
    rendered; ``final``: no further update follows for this generation; ``seconds``: since the request."""

    generation: int
    result: Any
    n_hints: int
    draft: bool
    final: bool
    seconds: float


@dataclass(frozen=True)
class PreviewFailure:
    """The newest request failed: ``message`` is one sentence for the dialog."""

    generation: int
    message: str
    seconds: float


#: fetch(job, attempt) -> (ColorizeResult, number of hints); runs in the worker thread, raises on failure.
FetchFn = Callable[[Any, Attempt], "tuple[Any, int]"]


def _start_daemon(target: Callable[[], None]) -> None:
    threading.Thread(target=target, name="colorize-patch-preview", daemon=True).start()


def is_draft(result: Any) -> bool:
    """True when the backend says it rendered a draft (``extra["draft"]``); older backends never do."""
    extra = getattr(result, "extra", None)
    return bool(extra.get("draft")) if isinstance(extra, dict) else False


def describe(update: PreviewUpdate) -> str:
    """The dialog's status line for a shown preview."""
    res = update.result
    extra = getattr(res, "extra", None) or {}
    what = (f"{res.width}x{res.height}, {extra.get('n_instances', 0)} object(s), {update.n_hints} hint(s), "
            f"{update.seconds:.{2 if update.seconds < 1 else 1}f} s")
    if update.draft:
        return f"Draft preview (approximate) {what}; computing the exact preview\u2026"
    return f"Preview {what}"


class PreviewFlow:
    """Draft-then-exact preview requests with a generation counter (see the module docstring).

    fetch:      :data:`FetchFn` (worker thread).
    on_update:  called with a :class:`PreviewUpdate` (main thread, newest generation only, not after close).
    on_failure: called with a :class:`PreviewFailure` (same rules).
    on_note:    called with a status text a fetch passed to ``attempt.note`` (same rules); optional.
    on_outdated: called (main thread) when the newest request has ended and an option changed while it ran
                without :attr:`fast` (see :meth:`option_changed`): the caller refreshes once; optional.
    deliver:    runs a callable on the main thread later (``lambda fn: GLib.idle_add(fn)``); the callable
                returns False (GLib's "run once"). Default: call it at once (tests).
    start:      starts the worker (default: a daemon ``threading.Thread``).
    draft:      ask for a draft first (False: the exact preview only, e.g. for a backend without drafts).
    auto_s:     :attr:`fast` threshold in seconds.
    """

    def __init__(self, fetch: FetchFn, on_update: Callable[[PreviewUpdate], Any],
                 on_failure: Callable[[PreviewFailure], Any], on_note: Optional[Callable[[str], Any]] = None,
                 deliver: Optional[Callable[[Callable[[], bool]], Any]] = None,
                 start: Callable[[Callable[[], None]], None] = _start_daemon, draft: bool = True,
                 auto_s: float = AUTO_PREVIEW_S, clock: Callable[[], float] = time.monotonic,
                 on_outdated: Optional[Callable[[], Any]] = None):
        self._fetch = fetch
        self._on_update = on_update
        self._on_failure = on_failure
        self._on_note = on_note
        self._on_outdated = on_outdated
        self._deliver = deliver or (lambda fn: fn())
        self._start = start
        self._draft = draft
        self._auto_s = auto_s
        self._clock = clock
        self._lock = threading.Lock()
        self._generation = 0
        self._closed = False
        self._answered = True       # the newest generation has shown something (or failed)
        self._in_flight = False     # the newest generation has not ended yet (main thread's view)
        self._outdated = False      # an option changed while the newest generation ran, not fast
        self._running: Optional[Attempt] = None     # the attempt a worker is fetching now
        self._idle = threading.Event()
        self._idle.set()
        self.fast = False           # the newest answered generation's first answer came within auto_s

    # ---- main thread ---------------------------------------------------------------------------------------------
    @property
    def generation(self) -> int:
        return self._generation

    @property
    def closed(self) -> bool:
        return self._closed

    def request(self, job: Any) -> int:
        """Start a preview of ``job`` (whatever ``fetch`` needs, read on the main thread); supersedes (cancels)
        every earlier request. Returns the new generation; 0 after :meth:`close`."""
        with self._lock:
            if self._closed:
                return 0
            self._generation += 1
            gen = self._generation
            self._answered = False
        self._in_flight = True
        self._outdated = False
        t0 = self._clock()
        self._start(lambda: self._work(gen, job, t0))
        return gen

    def option_changed(self) -> bool:
        """A dialog option changed (main thread). True: refresh now (the backend answers fast). False: the
        preview is out of date; if a request is running, ``on_outdated`` asks for one refresh when it ends (its
        answer shows whether the backend is fast now, e.g. once the exact analysis is cached)."""
        if self.fast:
            return True
        if self._in_flight:
            self._outdated = True
        return False

    def cancel(self) -> Optional[JobIds]:
        """Drop and cancel what is in flight (no new request). Returns the job a worker may still be running on
        the backend (cancel it there), or None."""
        with self._lock:
            self._generation += 1
            running = self._running
        self._in_flight = self._outdated = False
        return running.ids if running is not None else None

    def close(self) -> Optional[JobIds]:
        """The dialog is closing: cancel what is in flight; no callback runs after this returns. Never waits.
        Returns the job a worker may still be running on the backend (cancel it there), or None."""
        with self._lock:
            self._closed = True
            self._generation += 1
            running = self._running
        return running.ids if running is not None else None

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` until no worker is inside a fetch; True when none is."""
        return self._idle.wait(timeout_s)

    # ---- worker thread -------------------------------------------------------------------------------------------
    def _stale(self, gen: int) -> bool:
        return self._closed or gen != self._generation

    def _work(self, gen: int, job: Any, t0: float) -> None:
        def stale() -> bool:
            return self._stale(gen)

        def note(text: str) -> None:
            if self._on_note is not None and not stale():
                self._post(gen, lambda: self._on_note(text))

        try:
            if self._draft:
                res, n = self._attempt(job, Attempt(gen, True, stale, note))
                if stale():
                    return
                draft = is_draft(res)
                self._post(gen, self._shown(PreviewUpdate(gen, res, n, draft, not draft, self._clock() - t0)))
                if not draft:
                    return          # the backend had the exact analysis: that was the exact preview
            res, n = self._attempt(job, Attempt(gen, False, stale, note))
            if stale():
                return
            self._post(gen, self._shown(PreviewUpdate(gen, res, n, False, True, self._clock() - t0)))
        except Exception as e:      # noqa: BLE001 - shown in the dialog; a stale request's error is dropped
            if not stale():
                msg = str(e) or e.__class__.__name__
                self._post(gen, self._failed(PreviewFailure(gen, msg, self._clock() - t0)))

    def _attempt(self, job: Any, attempt: Attempt) -> "tuple[Any, int]":
        """One fetch, known to :meth:`close` / :meth:`cancel` while it runs."""
        with self._lock:
            if attempt.should_cancel():
                raise RuntimeError("superseded")        # dropped: the generation is stale
            self._running = attempt
            self._idle.clear()
        try:
            return self._fetch(job, attempt)
        finally:
            with self._lock:
                if self._running is attempt:
                    self._running = None
                    self._idle.set()

    def _shown(self, update: PreviewUpdate) -> Callable[[], None]:
        def run() -> None:
            if not self._answered:
                self._answered = True
                self.fast = update.seconds <= self._auto_s
            self._on_update(update)
            if update.final:
                self._ended()
        return run

    def _failed(self, failure: PreviewFailure) -> Callable[[], None]:
        def run() -> None:
            self._answered = True
            self.fast = False
            self._on_failure(failure)
            self._ended()
        return run

    def _ended(self) -> None:
        self._in_flight = False
        if self._outdated:
            self._outdated = False
            if self._on_outdated is not None and not self._closed:
                self._on_outdated()

    def _post(self, gen: int, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the main thread unless the generation is stale or the flow closed by then."""
        def on_main() -> bool:
            if not self._stale(gen):
                fn()
            return False
        self._deliver(on_main)



def preview_call(inp: PreviewInputs, options: dict, ids: JobIds, long_side: int = PREVIEW_SIDE,
                 draft: bool = False, progress: Any = None, should_cancel: Any = None) -> Callable[[Any], Any]:
    """call(client) asking for the preview of ``inp`` as job ``ids``: the client's ColorizeResult with the 8-bit
    proxy (``extra["draft"]``: a draft was rendered). PluginError when the backend sends anything but 8 bit."""
    def call(client: Any) -> Any:
        res = client.preview(inp.width, inp.height, inp.fmt, inp.pixels, options, hints=inp.hints,
                             long_side=long_side, progress=progress, should_cancel=should_cancel, draft=draft,
                             job_id=ids.job_id, token=ids.token)
        if res.fmt not in ("rgb8", "rgba8"):
            raise PluginError(BAD_PREVIEW.format(fmt=res.fmt))
        return res
    return call


def fetch_preview(inp: PreviewInputs, options: dict, endpoint: str, cfg: Any, attempt: Attempt) -> Any:
    """The dialog's backend call for ``attempt`` (its draft flag, job ids and cancel test) at ``endpoint``
    (``cfg``: the plug-in's PluginConfig). No GIMP call: safe in the worker thread. Raises PluginError (one
    sentence) or JobCancelled. No watchdog: the dialog cancels its preview itself when it closes."""
    return run_job(endpoint, cfg, preview_call(inp, options, attempt.ids, draft=attempt.draft,
                                               should_cancel=attempt.should_cancel))
