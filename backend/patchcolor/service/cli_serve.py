"""Command-line glue for the service: ``patchcolor serve``, ``patchcolor keys`` and ``colorize --remote``.

The main CLI (patchcolor/cli.py) wires these in::

    from .service.cli_serve import add_keys_parser, add_remote_arguments, add_serve_parser, run_remote_colorize
    add_serve_parser(subparsers)        # sets func=cmd_serve   -> returns an exit code
    add_keys_parser(subparsers)         # sets func=cmd_keys    -> returns an exit code
    add_remote_arguments(colorize_parser)   # --remote ENDPOINT, --server-key, --client-key, --remote-timeout
    ...
    if args.remote:
        result = run_remote_colorize(args.remote, src, opts, server_key=args.server_key,
                                     client_key=args.client_key, timeout_s=args.remote_timeout,
                                     progress=progress)       # same Result as Pipeline.run (state excepted)

This module also runs on its own: ``python -m patchcolor.service.cli_serve serve|keys ...``.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from ..errors import Cancelled, PatchColorError
from .auth import EndpointRefused, make_keys
from .limits import RemoteLimits

if TYPE_CHECKING:   # imported where used: patchcolor.result pulls in torch, which `serve` may not need yet
    from ..options import Options
    from ..prepare import SourceImage
    from ..result import FusionState, Result

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"
LOG_FORMAT = "%(asctime)s.%(msecs)03d %(levelname)-7s %(threadName)s: %(message)s"


# ------------------------------------------------------------------------------------------------------ serve
def add_serve_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``serve`` on an argparse subparsers object (``func`` = :func:`cmd_serve`)."""
    p = subparsers.add_parser(
        "serve", help="run the colorize service (ZeroMQ) for GIMP and --remote clients",
        description="Run the long-lived colorize backend. Loads each model once, answers any number of clients, "
                    "queues jobs (one worker per device). Listens on loopback unless CURVE keys are given.")
    p.add_argument("--endpoint", default=DEFAULT_ENDPOINT,
                   help=f"ZeroMQ endpoint to bind (default {DEFAULT_ENDPOINT}); a non-loopback address needs "
                        "--curve-keys")
    p.add_argument("--device", action="append", metavar="DEVICE",
                   help="auto, cpu, cuda or cuda:N; repeat (or comma-separate) for one worker per device "
                        "(default auto)")
    p.add_argument("--models", type=Path, metavar="DIR", help="folder with the weight files (default: models/ or "
                                                              "$PATCHCOLOR_MODELS)")
    p.add_argument("--preload", action="store_true",
                   help="load the default models at start-up (fail now if weights are missing)")
    p.add_argument("--curve-keys", type=Path, metavar="DIR",
                   help="folder with server.key_secret (from `patchcolor keys DIR`) and optionally "
                        "authorized_clients/*.key: enables CURVE encryption + authentication")
    p.add_argument("--max-pixels", type=int, default=100_000_000,
                   help="largest width x height accepted (default 100000000)")
    p.add_argument("--queue-size", type=int, default=8, help="jobs that may wait; more get 'busy' (default 8)")
    p.add_argument("--cache-mb", type=float, default=1024.0,
                   help="memory kept for `refuse` (source pixels + instance colours of recent jobs), in MB "
                        "(default 1024)")
    p.add_argument("--untrusted-loopback", action="store_true",
                   help="treat loopback clients as remote (behind an SSH tunnel or a proxy): remote option limits, "
                        "no paths or versions in `info`")
    p.add_argument("--remote-job-mb", type=float, default=RemoteLimits.job_bytes / 2**20, metavar="MB",
                   help="estimated memory one remote client's job may need, in MiB (default "
                        f"{RemoteLimits.job_bytes / 2**20:.0f}); remote jobs also keep net_size <= "
                        f"{RemoteLimits.net_size}, batch_size <= {RemoteLimits.batch_size}, max_side <= "
                        f"{RemoteLimits.max_side}, score_thresh >= {RemoteLimits.min_score_thresh}")
    p.add_argument("--shutdown-grace", type=float, default=60.0, metavar="SECONDS",
                   help="how long SIGTERM/SIGINT waits for the running job to stop (default 60)")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    p.add_argument("--pipeline-factory", help=argparse.SUPPRESS)   # MODULE:CALLABLE (tests, benchmarks)
    p.set_defaults(func=cmd_serve)
    return p


def _devices(values: list[str] | None) -> tuple[str, ...]:
    out = [d.strip() for v in (values or ["auto"]) for d in v.split(",") if d.strip()]
    return tuple(out or ["auto"])


def _load_factory(spec: str) -> Callable[..., Any]:
    mod, _, name = spec.partition(":")
    return getattr(importlib.import_module(mod), name or "make_pipeline")


def cmd_serve(args: argparse.Namespace) -> int:
    """``patchcolor serve``: blocks until SIGTERM/SIGINT; 0 after a clean shutdown."""
    from .server import Server, ServerConfig

    logging.basicConfig(level=getattr(logging, args.log_level.upper()), format=LOG_FORMAT,
                        datefmt="%Y-%m-%d %H:%M:%S", stream=sys.stderr, force=True)
    log = logging.getLogger("patchcolor.service")
    if args.max_pixels <= 0 or args.queue_size <= 0 or args.cache_mb < 0 or args.remote_job_mb <= 0:
        log.error("--max-pixels, --queue-size and --remote-job-mb must be positive, --cache-mb >= 0")
        return 2
    cfg = ServerConfig(
        endpoint=args.endpoint, devices=_devices(args.device), models_dir=args.models, max_pixels=args.max_pixels,
        queue_size=args.queue_size, cache_bytes=int(args.cache_mb * 1e6), curve_keys=args.curve_keys,
        preload=args.preload, shutdown_grace_s=args.shutdown_grace, untrusted_loopback=args.untrusted_loopback,
        remote_limits=RemoteLimits(job_bytes=int(args.remote_job_mb * 2**20)),
        pipeline_factory=_load_factory(args.pipeline_factory) if args.pipeline_factory else None)
    try:
        server = Server(cfg)
    except EndpointRefused as e:
        log.error("%s", e)
        return 2
    try:
        server.start()
    except (PatchColorError, OSError) as e:
        log.error("cannot start: %s", getattr(e, "message", e))
        return 1
    except KeyboardInterrupt:
        log.info("interrupted during start-up")
        return 130
    return server.serve_forever()


# ------------------------------------------------------------------------------------------------------- keys
def add_keys_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``keys`` (``func`` = :func:`cmd_keys`)."""
    p = subparsers.add_parser(
        "keys", help="make a CURVE key pair for `serve --curve-keys` (or for a client)",
        description="Write DIR/NAME.key (public: give it to clients, or put a client's into the server's "
                    "DIR/authorized_clients/) and DIR/NAME.key_secret (private, mode 0600).")
    p.add_argument("dir", type=Path, metavar="DIR")
    p.add_argument("--name", default="server", help="file name stem (default server)")
    p.add_argument("--force", action="store_true", help="replace an existing key pair")
    p.set_defaults(func=cmd_keys)
    return p


def cmd_keys(args: argparse.Namespace) -> int:
    try:
        public, secret = make_keys(args.dir, args.name, args.force)
    except (FileExistsError, ValueError, OSError) as e:
        print(f"patchcolor keys: {e}", file=sys.stderr)
        return 1
    key = public.read_text().split('public-key = "')[1].split('"')[0]
    print(f"public key:  {public}\nsecret key:  {secret}\nZ85 public key: {key}")
    if args.name == "server":
        print(f"serve with:  patchcolor serve --endpoint tcp://0.0.0.0:5555 --curve-keys {args.dir}\n"
              f"clients need the public key ({public.name} or the Z85 text above)")
    return 0


# ---------------------------------------------------------------------------------------------------- remote
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


# FusionState stays on the server (refuse there by job id); a remote Result carries this empty one.
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


# ------------------------------------------------------------------------------------------------ standalone
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="patchcolor")
    sub = parser.add_subparsers(dest="command", required=True)
    add_serve_parser(sub)
    add_keys_parser(sub)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
