"""The dialog preview's request logic (gimp_plugin/patchcolor_client/previewflow.py) with a fake client: draft then
exact, exact at once when the backend has it cached, newer requests supersede (cancel + drop) older ones, nothing
after close, failures, the auto-refresh 'fast' rule. No GIMP, no GTK: the main loop is a queue run by the test."""
from __future__ import annotations

import queue
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "gimp_plugin"))
from patchcolor_client.previewflow import (Attempt, PreviewFailure, PreviewFlow, PreviewUpdate,  # noqa: E402
                                           describe, is_draft)


@dataclass
class FakeResult:
    width: int
    height: int
    extra: dict = field(default_factory=dict)


class MainLoop:
    """What GLib.idle_add does for the flow: callables queued by worker threads, run when the test says."""

    def __init__(self):
        self.q: queue.Queue = queue.Queue()

    def deliver(self, fn):
        self.q.put(fn)

    def run_pending(self, wait: float = 0.0) -> int:
        n = 0
        try:
            while True:
                fn = self.q.get(timeout=wait) if wait and n == 0 else self.q.get_nowait()
                assert fn() is False          # GLib: run once
                n += 1
        except queue.Empty:
            return n


class Recorder:
    def __init__(self):
        self.updates: list[PreviewUpdate] = []
        self.failures: list[PreviewFailure] = []
        self.notes: list[str] = []


def make_flow(fetch, loop=None, rec=None, **kw):
    rec = rec or Recorder()
    flow = PreviewFlow(fetch, rec.updates.append, rec.failures.append, rec.notes.append,
                       deliver=loop.deliver if loop else None, **kw)
    return flow, rec


def sync_start(target):
    target()


def test_draft_then_exact_in_order():
    calls = []

    def fetch(job, att: Attempt):
        calls.append((job, att.draft))
        return FakeResult(64, 48, {"draft": att.draft, "n_instances": 2}), 1

    flow, rec = make_flow(fetch, start=sync_start)
    gen = flow.request("job-1")
    assert calls == [("job-1", True), ("job-1", False)]
    assert [(u.generation, u.draft, u.final) for u in rec.updates] == [(gen, True, False), (gen, False, True)]
    assert not rec.failures
    assert describe(rec.updates[0]).startswith("Draft preview (approximate) 64x48, 2 object(s), 1 hint(s)")
    assert describe(rec.updates[1]).startswith("Preview 64x48, 2 object(s), 1 hint(s)")


def test_backend_with_the_exact_analysis_cached_answers_once():
    calls = []

    def fetch(job, att):
        calls.append(att.draft)
        return FakeResult(64, 48, {"draft": False}), 0

    flow, rec = make_flow(fetch, start=sync_start)
    flow.request("job")
    assert calls == [True]                             # no second (exact) request
    assert [(u.draft, u.final) for u in rec.updates] == [(False, True)]


def test_older_backend_without_drafts_and_flow_without_draft():
    calls = []

    def fetch(job, att):
        calls.append(att.draft)
        return FakeResult(8, 8, {}), 0                 # no "draft" in the header: an exact preview

    flow, rec = make_flow(fetch, start=sync_start)
    flow.request("a")
    flow2, rec2 = make_flow(fetch, start=sync_start, draft=False)
    flow2.request("b")
    assert calls == [True, False]
    assert [(u.draft, u.final) for u in rec.updates + rec2.updates] == [(False, True), (False, True)]
    assert not is_draft(FakeResult(1, 1, {})) and is_draft(FakeResult(1, 1, {"draft": True}))


def test_newer_request_cancels_and_drops_the_older_one():
    """Request 1's exact fetch blocks until it sees should_cancel(); request 2 arrives meanwhile. Only request 2's
    previews are shown, request 1's exact call was told to cancel, and its late result is dropped."""
    loop = MainLoop()
    started = threading.Event()
    cancelled_seen = threading.Event()
    release = threading.Event()

    def fetch(job, att):
        if job == 1 and not att.draft:
            started.set()
            for _ in range(500):
                if att.should_cancel():
                    cancelled_seen.set()
                    break
                release.wait(0.01)
            return FakeResult(10, 10, {"draft": False, "n_instances": 1}), 0    # a late answer anyway
        return FakeResult(job * 10, 10, {"draft": att.draft}), 0

    flow, rec = make_flow(fetch, loop)
    g1 = flow.request(1)
    assert started.wait(5)
    loop.run_pending()
    assert [(u.generation, u.draft) for u in rec.updates] == [(g1, True)]      # request 1's draft was shown
    g2 = flow.request(2)
    assert g2 > g1
    assert cancelled_seen.wait(5)
    for _ in range(100):                 # both workers deliver; run the main loop until request 2 is final
        loop.run_pending(wait=0.05)
        if rec.updates and rec.updates[-1].final:
            break
    loop.run_pending(wait=0.2)           # anything request 1 still delivers is dropped
    assert [(u.generation, u.draft, u.result.width) for u in rec.updates] == [(g1, True, 10), (g2, True, 20),
                                                                               (g2, False, 20)]
    assert not rec.failures


def test_result_delivered_after_a_newer_request_is_dropped_on_the_main_thread():
    """Request 1 finished in its thread, but the main loop runs its callback only after request 2 started."""
    loop = MainLoop()
    flow, rec = make_flow(lambda job, att: (FakeResult(job, 1, {"draft": False}), 0), loop, start=sync_start)
    flow.request(1)
    flow.request(2)
    loop.run_pending()
    assert [u.result.width for u in rec.updates] == [2]


def test_close_cancels_and_no_callback_runs_after_it():
    loop = MainLoop()
    in_fetch = threading.Event()
    saw_cancel = threading.Event()

    def fetch(job, att):
        att.note("Starting the colorize backend\u2026")
        in_fetch.set()
        while not att.should_cancel():
            threading.Event().wait(0.01)
        saw_cancel.set()
        raise RuntimeError("Cancelled")      # what JobCancelled looks like to the flow

    flow, rec = make_flow(fetch, loop)
    flow.request("x")
    assert in_fetch.wait(5)
    flow.close()                              # returns at once: nothing joins the worker
    assert saw_cancel.wait(5)
    loop.run_pending(wait=0.2)
    assert rec.updates == [] and rec.failures == [] and rec.notes == []     # the queued note was dropped too
    assert flow.request("y") == 0 and flow.closed


def test_failure_is_reported_once_and_a_stale_failure_is_dropped():
    def fetch(job, att):
        if job == "bad":
            raise ValueError("The colorize backend reported an error: boom")
        return FakeResult(4, 4, {"draft": att.draft}), 0

    flow, rec = make_flow(fetch, start=sync_start)
    flow.request("bad")
    assert [f.message for f in rec.failures] == ["The colorize backend reported an error: boom"]
    assert not rec.updates and not flow.fast

    loop = MainLoop()
    flow2, rec2 = make_flow(fetch, loop, start=sync_start)
    flow2.request("bad")
    flow2.request("good")
    loop.run_pending()
    assert rec2.failures == [] and [u.final for u in rec2.updates] == [False, True]


def test_notes_reach_the_main_thread():
    loop = MainLoop()

    def fetch(job, att):
        att.note("Starting the colorize backend\u2026")
        return FakeResult(4, 4, {"draft": False}), 0

    flow, rec = make_flow(fetch, loop, start=sync_start)
    flow.request("x")
    assert rec.notes == []                    # nothing ran outside the main loop
    loop.run_pending()
    assert rec.notes == ["Starting the colorize backend\u2026"] and len(rec.updates) == 1


@pytest.mark.parametrize("first_s, fast", [(0.5, True), (2.0, True), (2.5, False)])
def test_fast_follows_the_first_answer_of_the_newest_request(first_s, fast):
    """Auto-refresh stays on while the first answer (the draft) came within auto_s, even if the exact one is
    slow; it is decided by the newest request."""
    now = [0.0]

    def fetch(job, att):
        now[0] += first_s if att.draft else 30.0
        return FakeResult(4, 4, {"draft": att.draft}), 0

    flow, rec = make_flow(fetch, start=sync_start, clock=lambda: now[0], auto_s=2.0)
    flow.request("x")
    assert flow.fast is fast
    assert [round(u.seconds, 3) for u in rec.updates] == [first_s, first_s + 30.0]
    assert describe(rec.updates[1]).endswith(f"{first_s + 30.0:.1f} s")


def test_describe_shows_subsecond_times_with_two_decimals():
    fast = PreviewUpdate(1, FakeResult(4, 4, {"n_instances": 1}), 0, False, True, 0.034)
    assert describe(fast) == "Preview 4x4, 1 object(s), 0 hint(s), 0.03 s"


def test_an_option_changed_during_a_slow_request_asks_for_one_refresh_when_it_ends():
    """Not fast (the draft took 12 s: the backend was loading its models): a change while the exact preview is
    computed does not refresh at once, but once that request ends the dialog is asked to refresh once (the
    backend then has the exact analysis cached and answers fast, which turns auto-refresh on)."""
    loop = MainLoop()
    now = [0.0]
    outdated = []

    def fetch(job, att):
        now[0] += 12.0 if att.draft else 20.0
        return FakeResult(4, 4, {"draft": att.draft}), 0

    rec = Recorder()
    flow = PreviewFlow(fetch, rec.updates.append, rec.failures.append, deliver=loop.deliver, start=sync_start,
                       clock=lambda: now[0], on_outdated=lambda: outdated.append(flow.generation))
    g = flow.request("slow")
    assert flow.option_changed() is False             # nothing shown yet: not fast
    loop.run_pending()
    assert [u.final for u in rec.updates] == [False, True] and not flow.fast
    assert outdated == [g]                            # exactly one follow-up, after the final update
    assert flow.option_changed() is False             # idle and not fast: the user presses Preview
    loop.run_pending()
    assert outdated == [g]

    flow.request("again")                              # no change while it runs: no follow-up
    loop.run_pending()
    assert outdated == [g]
    now[0] = 0.0

    def fast_fetch(job, att):
        now[0] += 0.1
        return FakeResult(4, 4, {"draft": False}), 0

    flow2 = PreviewFlow(fast_fetch, rec.updates.append, rec.failures.append, deliver=loop.deliver,
                        start=sync_start, clock=lambda: now[0], on_outdated=lambda: outdated.append("x"))
    flow2.request("cached")
    loop.run_pending()
    assert flow2.fast and flow2.option_changed() is True and outdated == [g]


def test_close_returns_the_job_still_running_on_the_backend():
    """The dialog cancels that job on the backend when it closes (OK or Cancel): close() names it (ids made by
    the flow and given to the fetch), wait_idle() tells when no fetch runs any more."""
    loop = MainLoop()
    in_fetch, release = threading.Event(), threading.Event()
    seen = []

    def fetch(job, att):
        seen.append(att.ids)
        in_fetch.set()
        release.wait(5)
        return FakeResult(4, 4, {"draft": att.draft}), 0

    flow, rec = make_flow(fetch, loop)
    assert flow.cancel() is None and flow.wait_idle(0)          # nothing running
    flow.request("x")
    assert in_fetch.wait(5)
    assert not flow.wait_idle(0)
    ids = flow.close()
    assert ids is not None and ids == seen[0] and ids.job_id and ids.token
    release.set()
    assert flow.wait_idle(5)
    loop.run_pending(wait=0.1)
    assert rec.updates == [] and len(seen) == 1                  # the exact preview was never asked for


def test_a_request_closed_before_its_worker_starts_is_never_fetched():
    started = []
    flow, rec = make_flow(lambda job, att: pytest.fail("fetched after close"), start=started.append)
    flow.request("x")
    assert flow.close() is None                                  # no fetch is running yet
    started[0]()                                                 # the worker thread starts late
    assert rec.updates == [] and rec.failures == [] and flow.wait_idle(0)
