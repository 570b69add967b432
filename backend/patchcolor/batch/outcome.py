"""What became of each input: :class:`ItemOutcome`, and the run's :class:`BatchSummary` with its one-line summary."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .plan import BatchItem

Status = Literal["done", "skipped", "failed", "busy", "not_attempted"]
# errors after which every other input would fail the same way: stop, count the rest as not attempted
FATAL_CODES = ("weights_missing", "weights_corrupt", "device_unavailable", "backend_unavailable", "output_unwritable")


@dataclass
class ItemOutcome:
    """status: done | skipped (already done) | failed | busy (another run has it) | not_attempted.
    message: one sentence for failed items; note: one sentence worth saying about a done item (e.g. only the first
    frame of an animated GIF was colorized). seconds: per step (read, the pipeline's stages, masks, encode)."""

    item: BatchItem
    status: Status
    message: str = ""
    code: str = ""
    seconds: dict[str, float] = field(default_factory=dict)
    note: str = ""

    def line(self) -> str:
        """'error: SRC: message', 'note: SRC: note' or "" (what the CLI prints for this input)."""
        if self.status == "failed":
            return f"error: {self.item.src}: {self.message}"
        return f"note: {self.item.src}: {self.note}" if self.note else ""


@dataclass
class BatchSummary:
    outcomes: list[ItemOutcome]
    stopped: str = ""         # why the batch stopped early ("" when it ran to the end)

    def count(self, status: Status) -> int:
        return sum(o.status == status for o in self.outcomes)

    @property
    def ok(self) -> bool:
        return not any(o.status in ("failed", "not_attempted") for o in self.outcomes)

    def line(self, out_dir: Path) -> str:
        """e.g. '3 colorized, 1 skipped (already done), 1 failed, 2 not attempted -> OUT'."""
        parts = [f"{self.count('done')} colorized", f"{self.count('skipped')} skipped (already done)",
                 f"{self.count('failed')} failed"]
        if self.count("not_attempted"):
            parts.append(f"{self.count('not_attempted')} not attempted"
                         + (" (the batch stopped at the error above)" if self.stopped else ""))
        if self.count("busy"):
            parts.append(f"{self.count('busy')} left to another run")
        return ", ".join(parts) + f" -> {out_dir}"
