"""Weight verification, resumable downloads, ``patchcolor weights`` and install.py's bootstrap: the torch build it
chooses per platform (probes faked), its hand-over to ``patchcolor weights fetch``, the GIMP and login-service
steps (loopback only, no real weights)."""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import pickle
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from patchcolor import download as dl
from patchcolor import models as pm
from patchcolor import weights as pw
from patchcolor.errors import WeightsCorrupt, WeightsMissing
from patchcolor.registry import command_name

ROOT = Path(__file__).resolve().parents[1]
INSTALL = ROOT / "install.py"
MiB = 1 << 20


def _load_install() -> Any:
    spec = importlib.util.spec_from_file_location("patchcolor_install_under_test", INSTALL)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


inst = _load_install()


def sha256(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


EITHER = {"algos": ("sha256", "md5"), "confirmed": False}      # Detectron2's undocumented name suffix


def entry_for(module: Any, data: bytes, *, name: str | None = None, algo: str = "sha256", prefix: str | None = None,
              required: bool = True, url: str = "https://example.invalid/x", algos: tuple[str, ...] | None = None,
              confirmed: bool = True, **kw: Any) -> Any:
    """A catalogue entry whose file name carries the real prefix of ``data`` (our own data, no weights)."""
    digest = hashlib.new("md5" if algo == "md5" else "sha256", data).hexdigest()
    prefix = prefix if prefix is not None else digest[:8]
    name = name or f"weights-{prefix}.pth"
    hp = module.HashPrefix(prefix, algos or (algo,), confirmed)
    return module.WeightFile(id=kw.pop("id", "test"), file=name, url=url, required=required, hash_prefix=hp, **kw)


def torch_like_bytes(n: int, seed: int = 0) -> bytes:
    """Bytes framed like a torch zip checkpoint (local header ... end-of-central-directory)."""
    body = os.urandom(n) if seed == 0 else hashlib.sha256(str(seed).encode()).digest() * (n // 32)
    return b"PK\x03\x04" + body + b"PK\x05\x06" + b"\0" * 18


# ----------------------------------------------------------------------------------------------- verify_file
def test_verify_accepts_matching_sha256_prefix_and_detects_corruption(tmp_path: Path) -> None:
    data = torch_like_bytes(3 * MiB + 123)
    e = entry_for(pm, data)
    assert e.file == f"weights-{sha256(data)[:8]}.pth"
    f = tmp_path / e.file
    f.write_bytes(data)
    r = pm.verify_file(f, e)
    assert r.status == "ok" and r.ok and r.hashed and r.prefix_algorithm == "sha256"
    assert r.sha256 == sha256(data) and r.size == len(data)

    bad = bytearray(data)
    bad[len(bad) // 2] ^= 0xFF                     # one flipped byte in the middle
    f.write_bytes(bytes(bad))
    r = pm.verify_file(f, e)
    assert r.status == "corrupt" and not r.usable and "prefix" in r.message

    f.write_bytes(data[:-1])                       # exact size known -> caught without hashing
    e_sized = entry_for(pm, data, size=len(data))
    r = pm.verify_file(f, e_sized, full=False)
    assert r.status == "corrupt" and not r.hashed and "size" in r.message
    assert pm.verify_file(tmp_path / "absent.pth", e).status == "missing"


def test_verify_full_sha256_and_pinned_record(tmp_path: Path) -> None:
    data = torch_like_bytes(100_000)
    f = tmp_path / "w.pth"
    f.write_bytes(data)
    assert pm.verify_file(f, entry_for(pm, data, sha256=sha256(data))).ok
    wrong = "0" * 64
    assert pm.verify_file(f, entry_for(pm, data, sha256=wrong)).status == "corrupt"
    rec = {"size": len(data), "sha256": sha256(data), "verified_at": "2026-01-01"}
    r = pm.verify_file(f, entry_for(pm, data), recorded=rec)
    assert r.ok and "pinned" in r.message
    assert pm.verify_file(f, entry_for(pm, data), recorded={**rec, "sha256": wrong}).status == "corrupt"
    assert pm.verify_file(f, entry_for(pm, data), full=False, recorded={**rec, "size": 5}).status == "corrupt"


def test_either_algorithm_prefix_is_accepted_and_reported(tmp_path: Path) -> None:
    data = pickle.dumps({"model": {"w": b"\0" * 50_000}, "__author__": "test"}, protocol=2)
    f = tmp_path / "model_final.pkl"
    f.write_bytes(data)
    md5 = hashlib.md5(data).hexdigest()
    r = pm.verify_file(f, entry_for(pm, data, prefix=md5[:6], **EITHER))
    assert r.ok and r.prefix_algorithm == "md5" and r.md5 == md5
    r = pm.verify_file(f, entry_for(pm, data, prefix=sha256(data)[:6], **EITHER))
    assert r.ok and r.prefix_algorithm == "sha256"
    # a confirmed sha256 entry does not accept an md5 prefix
    assert pm.verify_file(f, entry_for(pm, data, prefix=md5[:6], algo="sha256")).status == "corrupt"


def test_unconfirmed_algorithm_policy(tmp_path: Path) -> None:
    """Neither digest matches: 'reject' refuses; 'warn' accepts only a complete pickle of plausible size."""
    data = pickle.dumps({"model": {"w": os.urandom(80_000)}}, protocol=2)
    f = tmp_path / "model_final_abcdef.pkl"
    f.write_bytes(data)
    kw: dict[str, Any] = {"name": f.name, "prefix": "abcdef", **EITHER}
    assert pm.verify_file(f, entry_for(pm, data, **kw)).status == "corrupt"
    warn = entry_for(pm, data, on_prefix_mismatch="warn", approx_size=len(data), **kw)
    r = pm.verify_file(f, warn)
    assert r.status == "unconfirmed" and r.usable and not r.ok and r.prefix_algorithm is None
    assert pm.verify_file(f, entry_for(pm, data, on_prefix_mismatch="warn", approx_size=10 * len(data),
                                       **kw)).status == "corrupt"          # far from the expected size
    f.write_bytes(data[:-100])                                              # truncated pickle
    assert pm.verify_file(f, warn).status == "corrupt"
    f.write_bytes(data)
    pinned = {"size": len(data), "sha256": "1" * 64}
    assert pm.verify_file(f, warn, recorded=pinned).status == "corrupt"    # pin beats "looks plausible"


def test_a_name_without_hash_is_pinned_on_first_use_then_held_to_it(tmp_path: Path) -> None:
    """DDColor's model-zoo names carry no hash: a complete file is accepted as unconfirmed and pinned; a damaged
    one, one far from the expected size, or a later different file is refused."""
    data = torch_like_bytes(200_000)
    e = pm.WeightFile(id="d", file="ddcolor_paper_tiny.pth", url="https://example.invalid/d", hash_prefix=None,
                      approx_size=len(data))
    f = tmp_path / e.file
    f.write_bytes(data)
    r = pm.verify_file(f, e)
    assert r.status == "unconfirmed" and r.usable and r.sha256 == sha256(data), r.message
    assert pm.record_verified(tmp_path, e, r)
    pinned = pm.load_verified(tmp_path)[e.file]
    assert pm.verify_file(f, e, recorded=pinned).ok
    f.write_bytes(torch_like_bytes(200_000))                    # another file of the same size and format
    assert pm.verify_file(f, e, recorded=pinned).status == "corrupt"
    f.write_bytes(data[:-30])                                   # cut off: no end-of-central-directory record
    assert pm.verify_file(f, e).status == "corrupt"
    f.write_bytes(data)
    assert pm.verify_file(f, pm.WeightFile(id="d", file=e.file, url=e.url, hash_prefix=None,
                                           approx_size=10 * len(data))).status == "corrupt"
    assert pm.verify_file(f, pm.WeightFile(id="d", file=e.file, url=e.url, hash_prefix=None,
                                           sha256=sha256(data))).ok


def test_weights_fetch_and_verify_a_hashless_entry(tmp_path: Path) -> None:
    data = torch_like_bytes(150_000)
    e = pm.WeightFile(id="d", file="ddcolor_x.pth", url="https://example.invalid/d", hash_prefix=None,
                      approx_size=len(data), required=True)
    env = {"PATCHCOLOR_CATALOG": str(write_catalog(tmp_path / "cat.json", [e]))}
    src, dst = tmp_path / "offline", tmp_path / "models"
    src.mkdir()
    (src / e.file).write_bytes(data)
    p = run_weights("fetch", "--from", str(src), "--models-dir", str(dst), env=env)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stdout + p.stderr
    assert json.loads((dst / "verified.json").read_text())["files"][e.file]["sha256"] == sha256(data)
    p = run_weights("verify", "--models-dir", str(dst), env=env)
    assert p.returncode == 0, p.stdout + p.stderr


# ----------------------------------------------------------------------------------------------- weight_path
def test_weight_path_missing_message_is_one_sentence_with_the_fetch_command(tmp_path: Path) -> None:
    with pytest.raises(WeightsMissing) as ei:
        pm.weight_path("eccv16", tmp_path)
    err = ei.value
    assert err.message == (f"The eccv16 colorizer weights are missing: run `{command_name()} weights fetch "
                           f"--models-dir {tmp_path}`.")
    assert err.code == "weights_missing" and "install.py" not in err.message
    assert "colorization_release_v2-9b330a0b.pth" in err.details and str(tmp_path) in err.details  # for the log
    assert "https://colorizers.s3" in err.details
    (tmp_path / "model_final_a3ec72.pkl.part").write_bytes(b"x")
    with pytest.raises(WeightsMissing) as ei:
        pm.weight_path("detectron2", tmp_path)
    assert ei.value.message.startswith("The detectron2 detector weights are missing: run `")
    assert "resumes" in ei.value.details


def test_weight_path_found_alias_and_pinned_size(tmp_path: Path) -> None:
    f = tmp_path / "model_final_a3ec72.pkl"
    f.write_bytes(b"\x80\x02" + b"x" * 5000 + b".")
    assert pm.weight_path("detectron2", tmp_path) == f == pm.weight_path("r101", tmp_path)
    res = pm.verify_file(f, pm.registry().file("r101"))           # neither prefix matches our bytes
    res.status = "unconfirmed"                               # simulate an accepted file, then pin it
    assert pm.record_verified(tmp_path, pm.registry().file("r101"), res)
    assert not pm.record_verified(tmp_path, pm.registry().file("r101"), res)   # an existing pin is never replaced
    assert pm.load_verified(tmp_path)["model_final_a3ec72.pkl"]["sha256"] == res.sha256
    assert pm.weight_path("r101", tmp_path) == f
    f.write_bytes(b"\x80\x02.")
    with pytest.raises(WeightsCorrupt) as ei:
        pm.weight_path("r101", tmp_path)
    assert ei.value.message == (f"The r101 detector weights file {f} is damaged or not the official file: delete it "
                                f"and run `{command_name()} weights fetch --models-dir {tmp_path}`.")
    assert "bytes instead of" in ei.value.details


# ----------------------------------------------------------------------------------------------- downloads
class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *a: Any) -> None:   # quiet
        pass

    def do_GET(self) -> None:
        srv = self.server
        rng = self.headers.get("Range")
        srv.log.append(rng)
        if srv.status_code:
            self.send_error(srv.status_code)
            return
        data, start = srv.data, 0
        if rng and srv.honor_range:
            start = int(rng.split("=")[1].split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if len(srv.log) == 1 and srv.cut_at:      # first request: drop the connection after cut_at bytes
            self.wfile.write(body[:srv.cut_at])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, data: bytes, *, cut_at: int = 0, honor_range: bool = True, status_code: int = 0):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.data, self.cut_at, self.honor_range, self.status_code = data, cut_at, honor_range, status_code
        self.log: list[str | None] = []

    def handle_error(self, request: Any, client_address: Any) -> None:   # the deliberate drop is not an error
        pass

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/weights.bin"


@pytest.fixture
def serve() -> Iterator[Any]:
    servers: list[_Server] = []

    def start(data: bytes, **kw: Any) -> _Server:
        s = _Server(data, **kw)
        threading.Thread(target=s.serve_forever, daemon=True).start()
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


DATA3 = os.urandom(3 * MiB)


def test_download_resumes_with_range_after_dropped_connection(tmp_path: Path, serve: Any) -> None:
    srv = serve(DATA3, cut_at=MiB)
    part = tmp_path / "w.part"
    n = dl.download(srv.url, part, retries=3, retry_wait=0, timeout=10, progress=False)
    assert n == len(DATA3) and sha256(part.read_bytes()) == sha256(DATA3)
    assert srv.log == [None, f"bytes={MiB}-"]            # continued exactly where the drop happened


def test_download_restarts_cleanly_when_server_ignores_range(tmp_path: Path, serve: Any) -> None:
    srv = serve(DATA3, cut_at=MiB, honor_range=False)
    part = tmp_path / "w.part"
    n = dl.download(srv.url, part, retries=3, retry_wait=0, timeout=10, progress=False)
    assert srv.log == [None, f"bytes={MiB}-"]            # asked to resume, got a full 200 answer
    assert n == len(DATA3) == part.stat().st_size and sha256(part.read_bytes()) == sha256(DATA3)


def test_download_of_already_complete_part_and_http_errors(tmp_path: Path, serve: Any) -> None:
    srv = serve(DATA3)
    part = tmp_path / "w.part"
    part.write_bytes(DATA3)
    assert dl.download(srv.url, part, retries=1, retry_wait=0, progress=False) == len(DATA3)   # 416 = done
    assert srv.log == [f"bytes={len(DATA3)}-"] and part.read_bytes() == DATA3
    gone = serve(b"", status_code=404)
    with pytest.raises(dl.DownloadError) as ei:
        dl.download(gone.url, tmp_path / "x.part", retries=3, retry_wait=0, progress=False)
    assert ei.value.permanent and gone.log == [None]     # a 404 is not retried


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_download_gives_up_after_retries(tmp_path: Path) -> None:
    with pytest.raises(dl.DownloadError, match="gave up after 2 retries"):
        dl.download(f"http://127.0.0.1:{_closed_port()}/w", tmp_path / "w.part", retries=2, retry_wait=0,
                      timeout=2, progress=False)


def test_fetch_model_verifies_before_rename_and_pins(tmp_path: Path, serve: Any) -> None:
    data = torch_like_bytes(2 * MiB)
    srv = serve(data, cut_at=700_000)
    e = entry_for(pm, data, url=srv.url)
    out = pw.fetch_file(e, tmp_path, retries=2, retry_wait=0, progress=False)
    assert out.action == "downloaded" and out.result.ok
    assert (tmp_path / e.file).read_bytes() == data and not (tmp_path / (e.file + ".part")).exists()
    assert pm.load_verified(tmp_path)[e.file]["sha256"] == sha256(data)
    again = pw.fetch_file(e, tmp_path, retries=0, retry_wait=0, progress=False)
    assert again.action == "present" and len(srv.log) == 2          # nothing downloaded twice


def test_fetch_model_refuses_wrong_content(tmp_path: Path, serve: Any) -> None:
    data = torch_like_bytes(MiB)
    srv = serve(data)
    e = entry_for(pm, data, prefix="00000000", url=srv.url)
    out = pw.fetch_file(e, tmp_path, retries=0, retry_wait=0, progress=False)
    assert out.action == "refused" and out.result.status == "corrupt"
    assert list(tmp_path.iterdir()) == []                           # neither the file nor a .part stays


def test_fetch_model_discards_a_bad_resumed_part_once(tmp_path: Path, serve: Any) -> None:
    data = torch_like_bytes(2 * MiB)
    srv = serve(data)
    e = entry_for(pm, data, url=srv.url)
    (tmp_path / (e.file + ".part")).write_bytes(os.urandom(MiB))    # stale part from some other file
    out = pw.fetch_file(e, tmp_path, retries=0, retry_wait=0, progress=False)
    assert out.action == "downloaded" and (tmp_path / e.file).read_bytes() == data
    assert srv.log == [f"bytes={MiB}-", None]


def test_copy_model_links_or_copies_a_good_file(tmp_path: Path) -> None:
    data = torch_like_bytes(300_000)
    e = entry_for(pm, data)
    src = tmp_path / "src" / "nested"
    src.mkdir(parents=True)
    (src / e.file).write_bytes(data)
    out = pw.copy_file(e, tmp_path / "src", tmp_path / "models")
    assert out.action in ("linked", "copied") and (tmp_path / "models" / e.file).read_bytes() == data


# ----------------------------------------------------------------------------------------------- patchcolor weights
def run_weights(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``patchcolor weights ...`` in a fresh process (the package's command, as install.py and a wheel user run it)."""
    e = {k: v for k, v in os.environ.items() if not k.startswith("PATCHCOLOR_")}
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "patchcolor.cli", "weights", *args], check=False,
                          capture_output=True, text=True, env=e, timeout=120)


def write_catalog(path: Path, entries: list[Any]) -> Path:
    """A schema-2 catalogue with one colorizer model per entry (optional unless the entry is required)."""
    keys = ("id", "file", "url", "size", "approx_size", "sha256", "on_prefix_mismatch")
    files = [{**{k: getattr(e, k) for k in keys}, "hash_prefix": None if e.hash_prefix is None else {
        "hex": e.hash_prefix.hex, "algorithms": list(e.hash_prefix.algorithms), "confirmed": e.hash_prefix.confirmed}}
        for e in entries]
    models = [{"name": e.id, "kind": "colorizer", "file": e.id, "optional": not e.required, "label": e.id,
               "builder": "patchcolor.colorizers.eccv16:ECCVGenerator"} for e in entries]
    path.write_text(json.dumps({"schema": 2, "files": files, "models": models}))
    return path


def test_weights_verify_empty_dir_reports_missing(tmp_path: Path) -> None:
    p = run_weights("verify", "--models-dir", str(tmp_path))
    out = p.stdout + p.stderr
    assert p.returncode == pw.EXIT_CORRUPT == 1, out
    assert "missing" in out and "colorization_release_v2-9b330a0b.pth" in out and "model_final_a3ec72.pkl" in out
    assert "https://dl.fbaipublicfiles.com/detectron2/" in out and f"weights fetch --from /path/to/folder " \
        f"--models-dir {tmp_path}" in out
    assert "Traceback" not in out and "install.py" not in out


def test_weights_verify_ok_pins_then_detects_corruption(tmp_path: Path) -> None:
    a, b = torch_like_bytes(200_000), torch_like_bytes(300_000)
    ea, eb = entry_for(pm, a, id="a"), entry_for(pm, b, id="b", required=False)
    cat = write_catalog(tmp_path / "cat.json", [ea, eb])
    models = tmp_path / "m"
    models.mkdir()
    (models / ea.file).write_bytes(a)
    env = {"PATCHCOLOR_CATALOG": str(cat)}
    p = run_weights("verify", "--models-dir", str(models), env=env)
    assert p.returncode == 0, p.stdout + p.stderr          # optional b missing is fine ...
    assert run_weights("verify", "--optional", "--models-dir", str(models), env=env).returncode == 1  # ... unless
    assert json.loads((models / "verified.json").read_text())["files"][ea.file]["sha256"] == sha256(a)
    (models / eb.file).write_bytes(a)                      # a wrong optional file is still an error
    p = run_weights("verify", "--models-dir", str(models), env=env)
    assert p.returncode == 1 and "corrupt" in p.stdout


def test_weights_fetch_from_refuses_bad_file(tmp_path: Path) -> None:
    src, dst = tmp_path / "offline", tmp_path / "models"
    src.mkdir()
    (src / "colorization_release_v2-9b330a0b.pth").write_bytes(torch_like_bytes(50_000))
    p = run_weights("fetch", "eccv16", "--from", str(src), "--models-dir", str(dst))
    out = p.stdout + p.stderr
    assert p.returncode == 1, out
    assert "refused" in out and "prefix mismatch" in out
    assert not (dst / "colorization_release_v2-9b330a0b.pth").exists()


def test_weights_fetch_from_good_files_and_list(tmp_path: Path) -> None:
    a, b = torch_like_bytes(100_000), torch_like_bytes(120_000)
    ea, eb = entry_for(pm, a, id="a"), entry_for(pm, b, id="b", required=False)
    env = {"PATCHCOLOR_CATALOG": str(write_catalog(tmp_path / "cat.json", [ea, eb]))}
    src, dst = tmp_path / "offline", tmp_path / "models"
    src.mkdir()
    (src / ea.file).write_bytes(a)
    (src / eb.file).write_bytes(b)
    p = run_weights("fetch", "--from", str(src), "--models-dir", str(dst), env=env)
    assert p.returncode == 0, p.stdout + p.stderr
    assert (dst / ea.file).read_bytes() == a and not (dst / eb.file).exists()     # optional: only when asked
    p = run_weights("list", "--models-dir", str(dst), env=env)
    rows = {ln.split()[0]: ln.split() for ln in p.stdout.splitlines()[2:]}
    assert p.returncode == 0 and rows["a"][1] == "required" and rows["a"][4] == "present", p.stdout
    assert rows["b"][1] == "optional" and rows["b"][4] == "missing"
    p = run_weights("fetch", "b", "--from", str(src), "--models-dir", str(dst), env=env)    # by name
    assert p.returncode == 0 and (dst / eb.file).read_bytes() == b, p.stdout + p.stderr
    p = run_weights("fetch", "nope", "--models-dir", str(dst), env=env)
    assert p.returncode == pw.EXIT_USAGE and "unknown model nope; choose among a, b" in p.stderr


def test_weights_fetch_unreachable_server_exit_code_and_message(tmp_path: Path) -> None:
    """No network: exit 3, every missing file listed with folder and URL, later files not even tried."""
    a, b = torch_like_bytes(10_000), torch_like_bytes(20_000)
    port = _closed_port()
    ea = entry_for(pm, a, id="a", url=f"http://127.0.0.1:{port}/{entry_for(pm, a).file}")
    eb = entry_for(pm, b, id="b", url=f"http://127.0.0.1:{port}/{entry_for(pm, b).file}")
    cat = write_catalog(tmp_path / "cat.json", [ea, eb])
    p = run_weights("fetch", "--models-dir", str(tmp_path / "m"), "--retries", "1", "--retry-wait", "0",
                    "--timeout", "2", env={"PATCHCOLOR_CATALOG": str(cat)})
    out = p.stdout + p.stderr
    assert p.returncode == pw.EXIT_MISSING == 3, out
    for e in (ea, eb):
        assert e.file in out and e.url in out
    assert "weights fetch --from" in out and str(tmp_path / "m") in out and "skipped: offline" in out
    assert out.count("retry 1/1") == 1 and "Traceback" not in out


def test_weights_fetch_downloads_over_http_and_needs_no_torch(tmp_path: Path, serve: Any) -> None:
    """``patchcolor weights fetch`` downloads, verifies and pins; the command never imports torch."""
    a = torch_like_bytes(400_000)
    srv = serve(a)
    ea = entry_for(pm, a, id="a", url=srv.url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PATCHCOLOR_")}
    env["PATCHCOLOR_CATALOG"] = str(write_catalog(tmp_path / "cat.json", [ea]))
    code = ("import sys; from patchcolor.cli import main; rc = main(['weights', 'fetch', '--quiet', '--models-dir', "
            f"{str(tmp_path / 'm')!r}]); print('torch imported:', 'torch' in sys.modules); sys.exit(rc)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "torch imported: False" in p.stdout and (tmp_path / "m" / ea.file).read_bytes() == a
    assert pm.load_verified(tmp_path / "m")[ea.file]["sha256"] == sha256(a) and srv.log == [None]


# ----------------------------------------------------------------------------------------------- GIMP hook
FAKE_GIMP = '''
from dataclasses import dataclass, field
import json
from pathlib import Path
LOG = Path(__file__).with_suffix(".calls")

@dataclass
class R:
    messages: list = field(default_factory=list)
    pyzmq_ok: object = True

def _log(*a):
    calls = json.loads(LOG.read_text()) if LOG.exists() else []
    LOG.write_text(json.dumps(calls + [[str(x) for x in a]]))

def find_gimp_profiles():
    return []

def install_plugin(profile_dir, backend_cmd, endpoint, log_path):
    if "fail" in str(profile_dir):
        raise OSError("read-only profile")
    _log("install", profile_dir, backend_cmd, endpoint, log_path)
    return R(["ok"])

def uninstall_plugin(profile_dir):
    _log("uninstall", profile_dir)
    return True
'''


def test_gimp_step_calls_installer_for_each_profile(tmp_path: Path) -> None:
    fake = tmp_path / "gimp_install.py"
    fake.write_text(FAKE_GIMP)
    mod = inst.load_gimp_installer(fake)
    assert mod is not None
    p1, p2 = tmp_path / "p1", tmp_path / "p2"
    args = inst.parse_args(["--gimp-profile", str(p1), "--gimp-profile", str(p2), "--log", str(tmp_path / "l.log")])
    assert inst.gimp_step(args, ["/v/bin/patchcolor", "serve"], loader=lambda: mod) == 0
    calls = json.loads(fake.with_suffix(".calls").read_text())
    assert [c[1] for c in calls] == [str(p1), str(p2)]
    assert calls[0][2] == str(["/v/bin/patchcolor", "serve"]) and calls[0][3] == inst.DEFAULT_ENDPOINT
    bad = inst.parse_args(["--gimp-profile", str(tmp_path / "fail")])
    assert inst.gimp_step(bad, ["x"], loader=lambda: mod) == inst.EXIT_GIMP
    un = inst.parse_args(["--uninstall", "--gimp-profile", str(p1)])
    assert inst.gimp_step(un, None, loader=lambda: mod) == 0
    assert json.loads(fake.with_suffix(".calls").read_text())[-1] == ["uninstall", str(p1)]


def test_gimp_step_without_installer_or_with_a_broken_one(tmp_path: Path) -> None:
    args = argparse.Namespace(gimp_profile=[], uninstall=False, endpoint="e", log=str(tmp_path / "l"))
    assert inst.gimp_step(args, ["x"], loader=lambda: None) == 0
    assert inst.load_gimp_installer(tmp_path / "absent.py") is None
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('boom')\n")
    assert inst.load_gimp_installer(broken) is None


def test_models_from_finds_files_in_a_mirrored_layout(tmp_path: Path) -> None:
    deep = tmp_path / "COCO-InstanceSegmentation" / "mask_rcnn_R_101_FPN_3x" / "138205316"
    deep.mkdir(parents=True)
    (deep / "model_final_a3ec72.pkl").write_bytes(b"x")
    assert pw.find_in(tmp_path, "model_final_a3ec72.pkl") == deep / "model_final_a3ec72.pkl"
    assert pw.find_in(tmp_path, "model_final_a3ec72.pkl", max_depth=1) is None


def test_a_pinned_file_is_not_replaced_by_a_different_download(tmp_path: Path, serve: Any) -> None:
    """Unconfirmed-algorithm entry (the Detectron2 case): after the first accepted copy is pinned, another file
    that merely looks plausible is refused, both when present and when downloaded again."""
    a = pickle.dumps({"model": {"w": os.urandom(60_000)}}, protocol=4)
    b = pickle.dumps({"model": {"w": os.urandom(60_000)}}, protocol=4)
    assert len(a) == len(b)                                  # same size: only the pinned sha256 tells them apart
    srv = serve(b)
    e = entry_for(pm, a, name="model_final_abcdef.pkl", prefix="abcdef", url=srv.url,
                  on_prefix_mismatch="warn", approx_size=len(a), **EITHER)
    (tmp_path / e.file).write_bytes(a)
    first = pw.fetch_file(e, tmp_path, retries=0, retry_wait=0, progress=False)
    assert first.action == "present" and first.result.status == "unconfirmed" and srv.log == []
    assert pm.load_verified(tmp_path)[e.file]["sha256"] == sha256(a)
    (tmp_path / e.file).write_bytes(b)                       # swapped behind our back
    out = pw.fetch_file(e, tmp_path, retries=0, retry_wait=0, progress=False)
    assert (tmp_path / (e.file + ".corrupt")).read_bytes() == b     # moved aside ...
    assert out.action == "refused" and "verified" in out.detail     # ... and the download (b again) refused
    assert not (tmp_path / e.file).exists() and srv.log == [None]


def test_autostart_registers_and_uninstall_removes_the_login_service(tmp_path: Path, monkeypatch: Any) -> None:
    """install.py --autostart -> `patchcolor service install` in the venv: no systemd user instance runs here, so
    the unit file is written (and the message says what would be run); --uninstall removes it."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    py = Path(sys.executable)
    args = argparse.Namespace(endpoint="tcp://127.0.0.1:5597", log=str(tmp_path / "serve.log"))
    assert inst.service_step(py, "install", args, tmp_path / "models") == inst.EXIT_OK
    unit = tmp_path / "cfg" / "systemd" / "user" / "patchcolor.service"
    text = unit.read_text()
    assert f"-m patchcolor.cli serve --endpoint tcp://127.0.0.1:5597 --models {tmp_path / 'models'}" in text
    assert f"StandardError=append:{tmp_path / 'serve.log'}" in text
    args.endpoint = "tcp://0.0.0.0:5597"                      # never a network-facing service
    assert inst.service_step(py, "install", args, tmp_path / "models") == inst.EXIT_GIMP
    args.endpoint = "tcp://127.0.0.1:5597"
    assert inst.service_step(py, "uninstall", args, tmp_path / "models") == inst.EXIT_OK and not unit.exists()
    assert inst.service_step(tmp_path / "no-venv" / "python", "uninstall", args, tmp_path) == inst.EXIT_OK
    a = inst.parse_args(["--autostart", "--no-models"])
    assert a.autostart and not a.uninstall
    with pytest.raises(SystemExit):
        inst.parse_args(["--autostart", "--uninstall"])


# ----------------------------------------------------------------------------------------------- install.py: torch
PY = Path("/v/bin/python")
PIP = [str(PY), "-m", "pip", "install", "--disable-pip-version-check", "torch", "torchvision", "-c",
       str(ROOT / "constraints.txt")]


def reachable(url: str) -> None:
    return None


@pytest.mark.parametrize("machine, build, index", [
    (("linux", "x86_64", None, None), "cpu", "https://download.pytorch.org/whl/cpu"),
    (("linux", "aarch64", None, None), "cpu", "https://download.pytorch.org/whl/cpu"),
    (("linux", "x86_64", "NVIDIA H100 80GB HBM3, driver 580.65", None), "cuda", None),      # PyPI: CUDA build
    (("linux", "x86_64", None, "7.0.2"), "rocm", "https://download.pytorch.org/whl/rocm7.0"),
    (("linux", "x86_64", "NVIDIA RTX 4090, driver 580.1", "present"), "cuda", None),        # NVIDIA wins
    (("darwin", "arm64", None, None), "default", None),                                      # MPS wheels
    (("darwin", "x86_64", None, None), "default", None),
    (("windows", "amd64", "NVIDIA RTX 4090, driver 581.2", None), "cuda", "https://download.pytorch.org/whl/cu130"),
    (("windows", "amd64", None, None), "cpu", "https://download.pytorch.org/whl/cpu"),
])
def test_each_platform_gets_its_torch_build_and_pip_command(machine: tuple, build: str, index: str | None) -> None:
    m = inst.Machine(*machine)
    plan = inst.plan_torch(PY, m, None, None, unreachable=reachable)
    assert plan.commands == [PIP + (["--index-url", index] if index else [])]
    (note,) = plan.notes
    assert note.startswith(f"torch: the {build} build, because ")            # says which and why
    assert (index or "the default package index") in note


def test_torch_override_and_impossible_choices() -> None:
    linux, mac = inst.Machine("linux", "x86_64", "NVIDIA A100, driver 580", None), inst.Machine("darwin", "arm64")
    assert inst.plan_torch(PY, linux, "cpu", None, reachable).commands == [PIP + ["--index-url", inst.CPU_INDEX]]
    assert "because --torch cpu" in inst.plan_torch(PY, linux, "cpu", None, reachable).notes[0]
    assert inst.plan_torch(PY, linux, "rocm", None, reachable).commands == [PIP + ["--index-url", inst.ROCM_INDEX]]
    with pytest.raises(ValueError, match="no CUDA build for macOS"):
        inst.choose_torch(mac, "cuda")
    with pytest.raises(ValueError, match="Linux only"):
        inst.choose_torch(inst.Machine("windows", "amd64"), "rocm")
    assert inst.parse_args(["--torch", "rocm"]).torch == "rocm"
    with pytest.raises(SystemExit):
        inst.parse_args(["--torch", "mps"])


def test_unreachable_index_falls_back_to_the_default_index_with_one_sentence() -> None:
    plan = inst.plan_torch(PY, inst.Machine("linux", "x86_64"), None, None,
                           unreachable=lambda url: "Name or service not known")
    assert plan.commands == [PIP]                                       # the default index, no --index-url
    (note,) = plan.notes
    assert note.count(". ") == 0 and note.endswith(".")                # one sentence
    assert "https://download.pytorch.org/whl/cpu cannot be reached (Name or service not known)" in note
    assert "default package index" in note and "CUDA build" in note


def test_index_probe_against_a_live_and_a_dead_server(serve: Any) -> None:
    srv = serve(b"", status_code=404)                  # any HTTP answer (here 501 to HEAD): the index is there
    assert inst.index_unreachable(f"http://127.0.0.1:{srv.server_address[1]}/whl/cpu") is None
    assert inst.index_unreachable(f"http://127.0.0.1:{_closed_port()}/whl/cpu", timeout=5) is not None


@pytest.mark.parametrize("version, system, build", [
    ("2.14.1+cpu", "linux", "cpu"), ("2.14.1", "linux", "cuda"), ("2.14.1+cu130", "windows", "cuda"),
    ("2.14.1+rocm7.0", "linux", "rocm"), ("2.14.1", "windows", "cpu"), ("2.14.1", "darwin", "default")])
def test_build_of_an_installed_torch(version: str, system: str, build: str) -> None:
    assert inst.build_of(version, system) == build


def test_an_installed_torch_is_kept_unless_torch_names_another_build() -> None:
    cpu_box = inst.Machine("linux", "x86_64")
    same = inst.plan_torch(PY, cpu_box, None, "2.14.1+cpu", reachable)
    assert same.commands == [] and "kept" in same.notes[0]
    other = inst.plan_torch(PY, cpu_box, None, "2.14.1", reachable)             # the CUDA build from PyPI
    assert other.commands == [] and "`--torch cpu` replaces it" in other.notes[0]
    forced = inst.plan_torch(PY, cpu_box, "cpu", "2.14.1", reachable)
    assert forced.commands == [[str(PY), "-m", "pip", "uninstall", "-y", "torch", "torchvision"],
                               PIP + ["--index-url", inst.CPU_INDEX]]


def test_probes_read_nvidia_smi_and_rocm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inst.shutil, "which", lambda name: f"/usr/bin/{name}")
    answer = subprocess.CompletedProcess([], 0, "NVIDIA H100 80GB HBM3, 580.65.06\nNVIDIA H100 80GB HBM3, 580.65.06\n")
    assert inst._nvidia_smi(run=lambda *a, **k: answer) == "NVIDIA H100 80GB HBM3, driver 580.65.06 (+1 more)"
    no_driver = subprocess.CompletedProcess([], 9, "", "NVIDIA-SMI has failed: couldn't communicate with the driver")
    assert inst._nvidia_smi(run=lambda *a, **k: no_driver) is None
    (tmp_path / ".info").mkdir()
    (tmp_path / ".info" / "version").write_text("7.0.2-56\n")
    assert inst._rocm(tmp_path) == "7.0.2"
    monkeypatch.setattr(inst.shutil, "which", lambda name: None)
    assert inst._nvidia_smi() is None and inst._rocm(tmp_path / "absent") is None


def test_torch_step_runs_the_plan_and_reports_pip_failure(monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    calls: list[list[str]] = []
    monkeypatch.setattr(inst, "installed_torch", lambda python: None)
    monkeypatch.setattr(inst, "index_unreachable", lambda url, timeout=10.0: "no route")
    monkeypatch.setattr(inst.subprocess, "run", lambda cmd, **kw: calls.append(cmd) or
                        subprocess.CompletedProcess(cmd, 1))
    with pytest.raises(RuntimeError, match="installing torch failed"):
        inst.torch_step(PY, None, probe=lambda: inst.Machine("linux", "x86_64"))
    assert calls == [PIP] and "cannot be reached (no route)" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------- install.py: rest
def test_install_py_runs_on_the_standard_library_alone() -> None:
    p = subprocess.run([sys.executable, "-S", str(INSTALL), "--help"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "--torch {cpu,cuda,rocm}" in p.stdout and "--ddcolor" in p.stdout, p.stderr


def test_install_py_hands_the_weights_to_patchcolor_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--models-only / --verify / a plain run call `patchcolor weights` with the options passed on, and its exit
    code is install.py's."""
    calls: list[list[str]] = []
    code = {"rc": inst.EXIT_MISSING}
    monkeypatch.setattr(inst, "VENV", tmp_path / "venv")
    (tmp_path / "venv" / "bin").mkdir(parents=True)
    (tmp_path / "venv" / "bin" / "python").write_text("")
    (tmp_path / "venv" / "bin" / "patchcolor").write_text("")
    monkeypatch.setattr(inst.subprocess, "run", lambda cmd, **kw: calls.append([str(c) for c in cmd]) or
                        subprocess.CompletedProcess(cmd, code["rc"]))
    exe = str(tmp_path / "venv" / "bin" / "patchcolor")
    src = tmp_path / "offline"
    src.mkdir()
    assert inst.main(["--models-only", "--optional", "--models-dir", str(tmp_path / "m"), "--models-from", str(src),
                      "--quiet"]) == inst.EXIT_MISSING
    assert calls == [[exe, "weights", "fetch", "--optional", "--models-dir", str(tmp_path / "m"), "--from", str(src),
                      "--quiet"]]
    code["rc"] = 0
    assert inst.main(["--verify"]) == 0 and calls[-1] == [exe, "weights", "verify"]
    assert inst.patchcolor_command(tmp_path / "bare" / "python") == [str(tmp_path / "bare" / "python"), "-m",
                                                                     "patchcolor.cli"]


def test_pip_install_adds_the_ddcolor_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []
    monkeypatch.setattr(inst.subprocess, "run", lambda cmd, **kw: calls.append([str(c) for c in cmd]) or
                        subprocess.CompletedProcess(cmd, 0))
    assert inst.parse_args(["--ddcolor"]).ddcolor and not inst.parse_args([]).ddcolor
    inst.pip_install(tmp_path / "python", reinstall=True, ray=True, ddcolor=True)
    inst.pip_install(tmp_path / "python", reinstall=True, ddcolor=True)
    assert calls[0][calls[0].index("-e") + 1] == f"{ROOT}[test,ray,ddcolor]"
    assert calls[1][calls[1].index("-e") + 1] == f"{ROOT}[test,ddcolor]"
