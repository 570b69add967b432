"""``patchcolor colorize --remote``: the remote client side of the CLI. Sends an image to a ``patchcolor serve``
backend through ``patchcolor_client.Client`` and turns its answer into the same ``Result`` as ``Pipeline.run``.
The main CLI (patchcolor/cli.py) wires it in::

    from .service.remote import add_remote_arguments, run_remote_colorize
    add_remote_arguments(colorize_parser)   # --remote ENDPOINT, --server-key, --client-key, --remote-timeout
    ...
    if args.remote:
        result = run_remote_colorize(args.remote, src, opts, server_key=args.server_key,
                                     client_key=args.client_key, timeout_s=args.remote_timeout,
                                     progress=progress)       # same Result as Pipeline.run (state excepted)
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from ..errors import Cancelled, PatchColorError

if TYPE_CHECKING:   # imported where used: patchcolor.result pulls in torch
    from ..options import Options
    from ..prepare import SourceImage
    from ..result import FusionState, Result


def add_remote_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--remote ENDPOINT`` and its companions to the ``colorize`` sub-parser."""
    g = parser.add_argument_group("remote service")
    g.add_argument("--remote", metavar="ENDPOINT",
                   help="send the work to a `patchcolor serve` backend (e.g. tcp://127.0.0.1:5555)")
    g.add_argument("--server-key", metavar="KEY",
                   help="the server's CURVE public key (Z85 text or its .key file) for a CURVE server")
    g.add_argument("--client-key", type=Path, metavar="FILE",
                   help="this client's .key_secret when the server only admits listed clients")
    g.add_argument("--remote-timeout", type=float, default=30.0, metavar="SECONDS",
                   help="how long the server may stay silent before it counts as gone (default 30)")


class RemoteError(PatchColorError):
    """An error reported by (or about) the remote service; ``code`` is the wire code."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


# FusionState stays on the server (recompose there by job id); a remote Result carries this empty one.
def _empty_state() -> FusionState:
    from ..result import FusionState

    return FusionState((0, 0), np.zeros((2, 0, 0), np.float32), [], [], [])


#: ``busy`` retries of ``colorize --remote``: waits of BUSY_FIRST_WAIT_S, doubling up to BUSY_MAX_WAIT_S, at most
#: BUSY_RETRIES times (about 2 minutes in all), each wait with +-25 % jitter so that clients do not stay in step.
BUSY_RETRIES = 8
BUSY_FIRST_WAIT_S = 0.5
BUSY_MAX_WAIT_S = 30.0


def busy_waits(retries: int = BUSY_RETRIES, first_s: float = BUSY_FIRST_WAIT_S, max_s: float = BUSY_MAX_WAIT_S,
               rng: Any = None) -> list[float]:
    """The bounded exponential backoff (seconds) between ``busy`` retries."""
    import random

    rng = rng or random.Random()
    return [min(max_s, first_s * 2 ** i) * rng.uniform(0.75, 1.25) for i in range(retries)]


def check_key_files(server_key: Any, client_key: Path | None) -> None:
    """One sentence (RemoteError) for a --server-key / --client-key file that does not exist or is not a file."""
    candidates = [("--client-key", client_key)]
    if server_key is not None and not (isinstance(server_key, (str, bytes)) and len(server_key) == 40
                                       and not Path(os.fsdecode(server_key)).exists()):
        candidates.append(("--server-key", server_key))
    for flag, key in candidates:
        if key is None:
            continue
        path = Path(os.fsdecode(key))
        if not path.is_file():
            what = "no such file" if not path.exists() else "not a file"
            raise RemoteError("bad_request", f"{flag} {path}: {what} (give the key file made by `patchcolor keys`"
                              f"{', or the 40-character Z85 public key' if flag == '--server-key' else ''})")


def run_remote_colorize(endpoint: str, src: SourceImage, opts: Options, *, server_key: Any = None,
                        client_key: Path | None = None, timeout_s: float = 30.0,
                        progress: Callable[[str, float], None] | None = None,
                        busy_retries: int = BUSY_RETRIES,
                        say: Callable[[str], None] | None = None, hints: SourceImage | None = None) -> Result:
    """Colorize ``src`` on a remote ``patchcolor serve`` with ``opts``: the same Result as ``Pipeline.run``
    (image in the input's bit depth, gray -> RGB, alpha kept; instances with cropped masks), except ``state``,
    which stays on the server (an empty FusionState here; the job id is logged). The image is a read-only view
    of the received frame.

    A ``busy`` server (its queue is full) is retried ``busy_retries`` times with bounded exponential backoff
    (:func:`busy_waits`, the ZeroMQ guide's Lazy Pirate), each retry announced through ``say`` (default: a line
    on stderr). Errors come back as PatchColorError subclasses with the wire code (``RemoteError``;
    ``Cancelled``). ``hints``: a colour-hint map, sent as the request's hints frame."""
    from patchcolor_client import BackendError, BackendUnavailable, Client, HintMap, JobCancelled

    from ..result import InstanceResult, Result
    from .protocol import image_from_wire, source_to_wire

    if say is None:
        def say(text: str) -> None:
            print(text, file=sys.stderr, flush=True)

    check_key_files(server_key, client_key)
    fmt, pixels = source_to_wire(src)
    hint_map = None if hints is None else HintMap(hints.width, hints.height, *source_to_wire(hints))
    t0 = time.perf_counter()
    waits = busy_waits(busy_retries)
    try:
        with Client(endpoint, timeout_s=timeout_s, server_public_key=server_key, client_secret_key=client_key) as c:
            for attempt in range(len(waits) + 1):
                try:
                    res = c.colorize(src.width, src.height, fmt, pixels, opts.to_dict(), hints=hint_map, progress=(
                        lambda stage, frac, _overall: progress(stage, frac)) if progress else None)
                    break
                except BackendError as e:
                    if e.code != "busy" or attempt == len(waits):
                        raise
                    say(f"the server at {endpoint} is busy (its queue is full): retry {attempt + 1} of "
                        f"{len(waits)} in {waits[attempt]:.1f} s")
                    time.sleep(waits[attempt])
            image = image_from_wire(res.pixels, res.width, res.height, res.fmt)
            instances = [
                InstanceResult(i.class_id, i.class_name, i.score, i.box,
                               np.frombuffer(i.mask, np.uint8).reshape(i.mask_size[1], i.mask_size[0]) > 0,
                               i.mask_origin)
                for i in res.instances]
    except BackendError as e:
        gave_up = f" (gave up after {len(waits)} retries over {sum(waits):.0f} s)" if e.code == "busy" and waits else ""
        raise RemoteError(e.code, f"remote backend: {e.message}{gave_up}") from None
    except BackendUnavailable as e:
        raise RemoteError("backend_unavailable", str(e)) from None
    except JobCancelled as e:
        raise Cancelled(str(e)) from None
    except ValueError as e:   # bad key file / endpoint text
        raise RemoteError("bad_request", str(e)) from None
    except OSError as e:      # a key file that vanished or cannot be read
        raise RemoteError("bad_request", f"cannot read {e.filename or 'a key file'}: {e.strerror or e}") from None
    timings = dict(res.timings)
    timings["remote_total"] = time.perf_counter() - t0
    logging.getLogger("patchcolor.service").debug("remote job %s on %s", res.job_id, endpoint)
    return Result(image, instances, _empty_state(), timings)
