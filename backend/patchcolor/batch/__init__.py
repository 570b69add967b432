"""Batch colorization of files and folders: plan, read, run, write — safe to interrupt, resume and run twice, and
never replacing a file it did not write. One module per job, in the order an input goes through them:

* ``names``    output names (collisions, hidden and over-long names);
* ``records``  what ``OUT/.patchcolor/`` keeps per output: the lock record (before writing) and the done-marker;
* ``plan``     :func:`plan_batch` -> :class:`BatchPlan`: inputs found, names given, what is already done;
* ``locks``    :func:`take`: a per-output lock (two runs share the work) and the lock record;
* ``outputs``  :func:`write_item`: masks, image, done-marker, each atomic (``patchcolor.atomic``);
* ``outcome``  :class:`ItemOutcome` per input and the :class:`BatchSummary` line;
* ``run``      :func:`run_batch`: read -> colorize -> write per input, optionally overlapped.

Image decoding and encoding are ``patchcolor.io``; temporary files and their cleanup ``patchcolor.atomic``. The Ray
version (``patchcolor.cluster``) runs the same plan, locks and outputs on a cluster.
"""
from __future__ import annotations

from ..atomic import TMP_PREFIX, OutputUnwritable, clean_stale_tmp, install_sigterm_cleanup
from ..io import PNG_COMPRESS_LEVEL
from .locks import Claim, claim, take
from .names import output_suffix
from .outcome import FATAL_CODES, BatchSummary, ItemOutcome, Status
from .outputs import describe_os_error, write_item
from .plan import IMAGE_SUFFIXES, BatchItem, BatchPlan, plan_batch
from .records import STATE_DIR, SourceId
from .run import auto_overlap, frames_note, run_batch

__all__ = ["FATAL_CODES", "IMAGE_SUFFIXES", "PNG_COMPRESS_LEVEL", "STATE_DIR", "TMP_PREFIX", "BatchItem",
           "BatchPlan", "BatchSummary", "Claim", "ItemOutcome", "OutputUnwritable", "SourceId", "Status",
           "auto_overlap", "claim", "clean_stale_tmp", "describe_os_error", "frames_note", "install_sigterm_cleanup",
           "output_suffix", "plan_batch", "run_batch", "take", "write_item"]
