"""The service's commands: ``patchcolor serve`` and ``patchcolor keys`` (argparse wiring; the server is
server.py, the keys auth.py). The main CLI (patchcolor/cli.py) registers them::

    from .service.commands import add_keys_parser, add_serve_parser
    add_serve_parser(subparsers)        # sets func=cmd_serve   -> returns an exit code
    add_keys_parser(subparsers)         # sets func=cmd_keys    -> returns an exit code

This module also runs on its own: ``python -m patchcolor.service.commands serve|keys ...``.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import math
import sys
from pathlib import Path
from typing import Any, Callable

from patchcolor_client.protocol import DEFAULT_ENDPOINT

from ..errors import PatchColorError
from .auth import EndpointRefused, make_keys
from .limits import RemoteLimits

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
                   help="auto, cpu, cuda, cuda:N or mps; repeat (or comma-separate) for one worker per device "
                        "(default auto: an NVIDIA/AMD GPU, else an Apple GPU, else the CPU)")
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
    p.add_argument("--client-queue-size", type=int, metavar="N",
                   help="jobs one client may have waiting (default: half of --queue-size); the queue is served "
                        "round-robin across clients")
    p.add_argument("--client-mb", type=float, metavar="MB",
                   help="request data (pixels, masks, hint maps) one client's queued and running jobs may hold, "
                        "in MB; also the largest request (default: 16 bytes x --max-pixels, at least 64 MiB)")
    p.add_argument("--queue-mb", type=float, metavar="MB",
                   help="request data all queued and running jobs may hold, in MB (default: twice --client-mb)")
    p.add_argument("--cache-mb", type=float, default=1024.0,
                   help="memory kept for recomposing recent jobs with edited masks (their source pixels and "
                        "instance colours), in MB (default 1024)")
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
    positive = {"--max-pixels": args.max_pixels, "--queue-size": args.queue_size,
                "--remote-job-mb": args.remote_job_mb, "--client-queue-size": args.client_queue_size,
                "--client-mb": args.client_mb, "--queue-mb": args.queue_mb}
    bad = [flag for flag, v in positive.items() if v is not None and not (math.isfinite(v) and v > 0)]
    if bad:
        log.error("%s must be positive", ", ".join(bad))
        return 2
    if not (math.isfinite(args.cache_mb) and args.cache_mb >= 0):
        log.error("--cache-mb must be at least 0")
        return 2
    cfg = ServerConfig(
        endpoint=args.endpoint, devices=_devices(args.device), models_dir=args.models, max_pixels=args.max_pixels,
        queue_size=args.queue_size, client_queue_size=args.client_queue_size,
        client_bytes=int(args.client_mb * 1e6) if args.client_mb else None,
        queue_bytes=int(args.queue_mb * 1e6) if args.queue_mb else None,
        cache_bytes=int(args.cache_mb * 1e6), curve_keys=args.curve_keys,
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
