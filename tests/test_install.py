"""Model catalogue, weight verification, resumable downloads and install.py (loopback only, no real weights)."""
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
from patchcolor import models as pm
from patchcolor.errors import WeightsCorrupt, WeightsMissing

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


# ----------------------------------------------------------------------------------------------- weight_path
def test_weight_path_missing_message_names_file_folder_and_command(tmp_path: Path) -> None:
    with pytest.raises(WeightsMissing) as ei:
        pm.weight_path("eccv16", tmp_path)
    msg = str(ei.value)
    assert "colorization_release_v2-9b330a0b.pth" in msg and str(tmp_path) in msg
    assert "python3 install.py" in msg and "python3 install.py --models-from DIR" in msg
    assert ei.value.code == "weights_missing"
    (tmp_path / "model_final_a3ec72.pkl.part").write_bytes(b"x")
    with pytest.raises(WeightsMissing, match="resumes"):
        pm.weight_path("detectron2", tmp_path)


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
    with pytest.raises(WeightsCorrupt, match="install.py"):
        pm.weight_path("r101", tmp_path)


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
    n = inst.download(srv.url, part, retries=3, retry_wait=0, timeout=10, progress=False)
    assert n == len(DATA3) and sha256(part.read_bytes()) == sha256(DATA3)
    assert srv.log == [None, f"bytes={MiB}-"]            # continued exactly where the drop happened


def test_download_restarts_cleanly_when_server_ignores_range(tmp_path: Path, serve: Any) -> None:
    srv = serve(DATA3, cut_at=MiB, honor_range=False)
    part = tmp_path / "w.part"
    n = inst.download(srv.url, part, retries=3, retry_wait=0, timeout=10, progress=False)
    assert srv.log == [None, f"bytes={MiB}-"]            # asked to resume, got a full 200 answer
    assert n == len(DATA3) == part.stat().st_size and sha256(part.read_bytes()) == sha256(DATA3)


def test_download_of_already_complete_part_and_http_errors(tmp_path: Path, serve: Any) -> None:
    srv = serve(DATA3)
    part = tmp_path / "w.part"
    part.write_bytes(DATA3)
    assert inst.download(srv.url, part, retries=1, retry_wait=0, progress=False) == len(DATA3)   # 416 = done
    assert srv.log == [f"bytes={len(DATA3)}-"] and part.read_bytes() == DATA3
    gone = serve(b"", status_code=404)
    with pytest.raises(inst.DownloadError) as ei:
        inst.download(gone.url, tmp_path / "x.part", retries=3, retry_wait=0, progress=False)
    assert ei.value.permanent and gone.log == [None]     # a 404 is not retried


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_download_gives_up_after_retries(tmp_path: Path) -> None:
    with pytest.raises(inst.DownloadError, match="gave up after 2 retries"):
        inst.download(f"http://127.0.0.1:{_closed_port()}/w", tmp_path / "w.part", retries=2, retry_wait=0,
                      timeout=2, progress=False)


def test_fetch_model_verifies_before_rename_and_pins(tmp_path: Path, serve: Any) -> None:
    data = torch_like_bytes(2 * MiB)
    srv = serve(data, cut_at=700_000)
    e = entry_for(inst.M, data, url=srv.url)
    out = inst.fetch_model(e, tmp_path, retries=2, retry_wait=0, progress=False)
    assert out.action == "downloaded" and out.result.ok
    assert (tmp_path / e.file).read_bytes() == data and not (tmp_path / (e.file + ".part")).exists()
    assert inst.M.load_verified(tmp_path)[e.file]["sha256"] == sha256(data)
    again = inst.fetch_model(e, tmp_path, retries=0, retry_wait=0, progress=False)
    assert again.action == "present" and len(srv.log) == 2          # nothing downloaded twice


def test_fetch_model_refuses_wrong_content(tmp_path: Path, serve: Any) -> None:
    data = torch_like_bytes(MiB)
    srv = serve(data)
    e = entry_for(inst.M, data, prefix="00000000", url=srv.url)
    out = inst.fetch_model(e, tmp_path, retries=0, retry_wait=0, progress=False)
    assert out.action == "refused" and out.result.status == "corrupt"
    assert list(tmp_path.iterdir()) == []                           # neither the file nor a .part stays


def test_fetch_model_discards_a_bad_resumed_part_once(tmp_path: Path, serve: Any) -> None:
    data = torch_like_bytes(2 * MiB)
    srv = serve(data)
    e = entry_for(inst.M, data, url=srv.url)
    (tmp_path / (e.file + ".part")).write_bytes(os.urandom(MiB))    # stale part from some other file
    out = inst.fetch_model(e, tmp_path, retries=0, retry_wait=0, progress=False)
    assert out.action == "downloaded" and (tmp_path / e.file).read_bytes() == data
    assert srv.log == [f"bytes={MiB}-", None]


def test_copy_model_links_or_copies_a_good_file(tmp_path: Path) -> None:
    data = torch_like_bytes(300_000)
    e = entry_for(inst.M, data)
    src = tmp_path / "src" / "nested"
    src.mkdir(parents=True)
    (src / e.file).write_bytes(data)
    out = inst.copy_model(e, tmp_path / "src", tmp_path / "models")
    assert out.action in ("linked", "copied") and (tmp_path / "models" / e.file).read_bytes() == data


# ----------------------------------------------------------------------------------------------- install.py CLI
def run_install(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """install.py under ``-S`` (no site-packages): proves it needs the standard library only."""
    e = {k: v for k, v in os.environ.items() if not k.startswith("PATCHCOLOR_")}
    e.update(env or {})
    return subprocess.run([sys.executable, "-S", str(INSTALL), *args], check=False, capture_output=True,
                          text=True, env=e, timeout=120)


def write_catalog(path: Path, entries: list[Any]) -> Path:
    """A schema-2 catalogue with one colorizer model per entry (optional unless the entry is required)."""
    keys = ("id", "file", "url", "size", "approx_size", "sha256", "on_prefix_mismatch")
    files = [{**{k: getattr(e, k) for k in keys}, "hash_prefix": {
        "hex": e.hash_prefix.hex, "algorithms": list(e.hash_prefix.algorithms), "confirmed": e.hash_prefix.confirmed}}
        for e in entries]
    models = [{"name": e.id, "kind": "colorizer", "file": e.id, "optional": not e.required, "label": e.id,
               "builder": "patchcolor.colorize.eccv16:ECCVGenerator"} for e in entries]
    path.write_text(json.dumps({"schema": 2, "files": files, "models": models}))
    return path


def test_cli_verify_empty_dir_reports_missing(tmp_path: Path) -> None:
    p = run_install("--verify", "--models-dir", str(tmp_path))
    out = p.stdout + p.stderr
    assert p.returncode == 1, out
    assert "missing" in out and "colorization_release_v2-9b330a0b.pth" in out and "model_final_a3ec72.pkl" in out
    assert "https://dl.fbaipublicfiles.com/detectron2/" in out and "--models-from" in out
    assert "Traceback" not in out


def test_cli_verify_ok_pins_then_detects_corruption(tmp_path: Path) -> None:
    a, b = torch_like_bytes(200_000), torch_like_bytes(300_000)
    ea, eb = entry_for(pm, a, id="a"), entry_for(pm, b, id="b", required=False)
    cat = write_catalog(tmp_path / "cat.json", [ea, eb])
    models = tmp_path / "m"
    models.mkdir()
    (models / ea.file).write_bytes(a)
    env = {"PATCHCOLOR_CATALOG": str(cat)}
    p = run_install("--verify", "--models-dir", str(models), env=env)
    assert p.returncode == 0, p.stdout + p.stderr          # optional b missing is fine
    assert json.loads((models / "verified.json").read_text())["files"][ea.file]["sha256"] == sha256(a)
    (models / eb.file).write_bytes(a)                      # a wrong optional file is still an error
    p = run_install("--verify", "--models-dir", str(models), env=env)
    assert p.returncode == 1 and "corrupt" in p.stdout


def test_cli_models_from_refuses_bad_file(tmp_path: Path) -> None:
    src, dst = tmp_path / "offline", tmp_path / "models"
    src.mkdir()
    (src / "colorization_release_v2-9b330a0b.pth").write_bytes(torch_like_bytes(50_000))
    p = run_install("--models-only", "--no-gimp", "--models-from", str(src), "--models-dir", str(dst))
    out = p.stdout + p.stderr
    assert p.returncode == 1, out
    assert "refused" in out and "prefix mismatch" in out
    assert not (dst / "colorization_release_v2-9b330a0b.pth").exists()


def test_cli_models_from_good_files(tmp_path: Path) -> None:
    a = torch_like_bytes(100_000)
    ea = entry_for(pm, a, id="a")
    cat = write_catalog(tmp_path / "cat.json", [ea])
    src, dst = tmp_path / "offline", tmp_path / "models"
    src.mkdir()
    (src / ea.file).write_bytes(a)
    p = run_install("--models-only", "--models-from", str(src), "--models-dir", str(dst),
                    env={"PATCHCOLOR_CATALOG": str(cat)})
    assert p.returncode == 0, p.stdout + p.stderr
    assert (dst / ea.file).read_bytes() == a


def test_cli_unreachable_server_exit_code_and_message(tmp_path: Path) -> None:
    """No network: exit 3, every missing file listed with folder and URL, later files not even tried."""
    a, b = torch_like_bytes(10_000), torch_like_bytes(20_000)
    port = _closed_port()
    ea = entry_for(pm, a, id="a", url=f"http://127.0.0.1:{port}/{entry_for(pm, a).file}")
    eb = entry_for(pm, b, id="b", url=f"http://127.0.0.1:{port}/{entry_for(pm, b).file}")
    cat = write_catalog(tmp_path / "cat.json", [ea, eb])
    p = run_install("--models-only", "--models-dir", str(tmp_path / "m"), "--retries", "1", "--retry-wait", "0",
                    "--timeout", "2", env={"PATCHCOLOR_CATALOG": str(cat)})
    out = p.stdout + p.stderr
    assert p.returncode == inst.EXIT_MISSING == 3, out
    for e in (ea, eb):
        assert e.file in out and e.url in out
    assert "--models-from" in out and str(tmp_path / "m") in out and "skipped: offline" in out
    assert out.count("retry 1/1") == 1 and "Traceback" not in out


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
    assert inst._find_in(tmp_path, "model_final_a3ec72.pkl") == deep / "model_final_a3ec72.pkl"
    assert inst._find_in(tmp_path, "model_final_a3ec72.pkl", max_depth=1) is None


def test_a_pinned_file_is_not_replaced_by_a_different_download(tmp_path: Path, serve: Any) -> None:
    """Unconfirmed-algorithm entry (the Detectron2 case): after the first accepted copy is pinned, another file
    that merely looks plausible is refused, both when present and when downloaded again."""
    a = pickle.dumps({"model": {"w": os.urandom(60_000)}}, protocol=4)
    b = pickle.dumps({"model": {"w": os.urandom(60_000)}}, protocol=4)
    assert len(a) == len(b)                                  # same size: only the pinned sha256 tells them apart
    srv = serve(b)
    e = entry_for(inst.M, a, name="model_final_abcdef.pkl", prefix="abcdef", url=srv.url,
                  on_prefix_mismatch="warn", approx_size=len(a), **EITHER)
    (tmp_path / e.file).write_bytes(a)
    first = inst.fetch_model(e, tmp_path, retries=0, retry_wait=0, progress=False)
    assert first.action == "present" and first.result.status == "unconfirmed" and srv.log == []
    assert inst.M.load_verified(tmp_path)[e.file]["sha256"] == sha256(a)
    (tmp_path / e.file).write_bytes(b)                       # swapped behind our back
    out = inst.fetch_model(e, tmp_path, retries=0, retry_wait=0, progress=False)
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
