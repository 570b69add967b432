"""One input's outputs, in the order that makes an interruption safe: masks first, image next, done-marker last,
each written atomically (a temporary file renamed into place), so the next run redoes an input whose marker is
missing. OSError becomes one sentence (:func:`describe_os_error`)."""
from __future__ import annotations

import errno
import time
from pathlib import Path

from ..atomic import OutputUnwritable, atomic_write
from ..errors import PatchColorError
from ..io import PNG_COMPRESS_LEVEL, save_image, write_masks
from .plan import BatchItem
from .records import done_record


def write_item(item: BatchItem, result, compress_level: int = PNG_COMPRESS_LEVEL) -> dict[str, float]:
    """Write ``result`` (a Result: image (H, W, 3|4) uint8/uint16, instances) to ``item``'s outputs.
    Returns seconds per step {"masks", "encode", "marker"}. OSError propagates."""
    t0 = time.perf_counter()
    if item.mask_dir is not None:
        h, w = result.image.shape[:2]
        write_masks(item.mask_dir, result, w, h, compress_level)
    t1 = time.perf_counter()
    save_image(item.out, result.image, compress_level)
    t2 = time.perf_counter()
    write_marker(item, len(result.instances))
    return {"masks": t1 - t0, "encode": t2 - t1, "marker": time.perf_counter() - t2}


def write_marker(item: BatchItem, instances: int) -> None:
    """The done-marker, last: from now on the input counts as done."""
    text = done_record(item.source, item.key, item.mask_key, instances)
    atomic_write(item.marker, lambda p: p.write_text(text))


def describe_os_error(e: OSError, path: Path) -> PatchColorError:
    """An OSError while writing -> a typed one-sentence error; OutputUnwritable (the batch stops) when no other
    write can work either: disk full (bytes or inodes), quota, read-only, no permission."""
    why = e.strerror or str(e)
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM):
        return OutputUnwritable(f"cannot write {path}: {why}; stopping (nothing already written is lost)")
    return PatchColorError(f"cannot write {path}: {why}")
