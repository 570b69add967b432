"""``patchcolor colorize --ray`` on a real local Ray (``ray.init(num_cpus=2)``, one session for the module).

Marked ``ray``: ``pytest -m "not ray"`` leaves them out; without Ray installed they skip and say why.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from patchcolor import cli

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")   # Ray Data's own, at start-up
NO_RAY = "Ray is not installed: python3 install.py --ray (or pip install 'patchcolor[ray]')"
WORKER_TITLE = "ray::MapWorker(MapBatches(ColorizeWorker))"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Local runs in this module use one torch thread, as each 1-CPU Ray actor does: torch's CPU kernels may round
    differently with another thread count (a few 16-bit code values by 1), and the outputs are compared byte for
    byte."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ray_session(models_dir):
    """One local Ray for the module (workers inherit $PATCHCOLOR_MODELS from this process)."""
    ray = pytest.importorskip("ray", reason=NO_RAY)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def photos(tmp_path_factory, photo_gray) -> Path:
    """Six small inputs, a damaged one in the middle: 8-bit JPEG/PNG, 16-bit PNG, gray+alpha."""
    d = tmp_path_factory.mktemp("ray_photos")
    g = photo_gray
    Image.fromarray(g[:160, :200]).save(d / "a.jpg", quality=95)
    cv2.imwrite(str(d / "b16.png"), g[100:260, 50:250].astype(np.uint16) * 257)
    (d / "c_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    Image.fromarray(np.dstack([g[200:360, 100:260], np.full((160, 160), 200, np.uint8)]), "LA").save(d / "d.png")
    Image.fromarray(g[300:460, 300:500]).save(d / "e.png")
    Image.fromarray(g[50:210, 250:450]).save(d / "f.jpg", quality=90)
    return d


def _colorize(args: list, capsys) -> tuple[int, list[str]]:
    """Run the CLI in this process; (exit code, stderr lines that are not logging)."""
    code = cli.main(["colorize"] + [str(a) for a in args])
    err = capsys.readouterr().err.splitlines()
    return code, [ln for ln in err if ln.startswith("error:") or " colorized, " in ln]


def _files(out: Path) -> dict[str, bytes]:
    """Every output file (images, masks, instances.json), not the state folder."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and ".patchcolor" not in p.parts}


# no detector: the R101 test weights cost ~10 s an image at its 800 px input on this CPU; the Ray path does not
# depend on it (the worker runs the same Pipeline.run)
OPTS = ["--masks", "--max-side", "160", "--detector", "none"]


@pytest.fixture(scope="module")
def local_out(photos, models_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("local") / "out"
    assert cli.main(["colorize", str(photos), "-o", str(out)] + OPTS) == 1     # c_broken.png fails
    return out


@pytest.mark.ray
def test_same_bytes_and_messages_as_local(ray_session, photos, local_out, tmp_path, capsys):
    capsys.readouterr()
    code_l, lines_l = _colorize([photos, "-o", tmp_path / "x"] + OPTS, capsys)   # messages of a local run
    out = tmp_path / "ray"
    code, lines = _colorize([photos, "-o", out, "--ray"] + OPTS, capsys)
    assert (code, code_l) == (1, 1)
    assert [ln.replace(str(out), "OUT") for ln in lines] == [ln.replace(str(tmp_path / "x"), "OUT")
                                                            for ln in lines_l]
    assert any("c_broken.png" in ln for ln in lines if ln.startswith("error:"))   # the bad file fails alone ...
    assert lines[-1].startswith("5 colorized, 0 skipped (already done), 1 failed")  # ... the others are done
    want, got = _files(local_out), _files(out)
    assert sorted(got) == sorted(want) and len(want) == 10   # 5 images + 5 instances.json
    assert [k for k in want if want[k] != got[k]] == []                            # byte for byte
    assert not list(out.rglob(".tmp-*")) and not list(out.rglob(".probe-*"))


@pytest.mark.ray
def test_ddcolor_batch_on_ray_equals_local(ray_session, ddcolor_models, photos, local_out, tmp_path, capsys):
    """``--colorizer ddcolor-tiny`` (random DDColor-T weights in the model zoo's format, in the models folder the
    workers read): the Ray batch writes the local batch's files byte for byte, and they are DDColor's colours, not
    the default ECCV16's (a worker silently falling back would write those)."""
    pytest.importorskip("spandrel_extra_arches")
    inputs = [photos / "a.jpg", photos / "b16.png"]          # 8- and 16-bit
    dd = OPTS + ["--colorizer", "ddcolor-tiny"]
    local = tmp_path / "local"
    assert cli.main(["colorize", *map(str, inputs), "-o", str(local)] + dd) == 0
    capsys.readouterr()
    out = tmp_path / "ray"
    code, lines = _colorize([*inputs, "-o", out, "--ray"] + dd, capsys)
    assert code == 0 and lines[-1].startswith("2 colorized, 0 skipped (already done), 0 failed"), lines
    want, got = _files(local), _files(out)
    assert sorted(got) == sorted(want) and len(want) == 4      # 2 images + 2 instances.json
    assert [k for k in want if want[k] != got[k]] == []        # byte for byte
    for name in ("a.png", "b16.png"):
        ours = cv2.imread(str(out / name), cv2.IMREAD_UNCHANGED).astype(np.float64)
        eccv = cv2.imread(str(local_out / name), cv2.IMREAD_UNCHANGED).astype(np.float64)
        top = 65535.0 if name == "b16.png" else 255.0
        off = float(np.abs(ours - eccv).mean() / top * 255)
        assert off > 5, f"{name}: ECCV16's colours (mean difference {off:.2f} of 255)"


def _worker_pids() -> list[int]:
    """Our colorizing actors' processes (children of this session's raylet)."""
    import ray

    raylet = ray._private.worker._global_node.all_processes["raylet"][0].process.pid
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().split(b"\0")[0].decode()
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if cmd.startswith(WORKER_TITLE) and ppid == raylet:
                pids.append(int(d.name))
    return pids


def _wait_for(cond, timeout: float = 300.0) -> None:
    """Wait until ``cond()`` holds, at most ``timeout`` seconds. Ray's worker processes and the files they write
    send no event this test process could wait on, so this looks again every 50 ms up to the deadline."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s"
        time.sleep(0.05)


@pytest.mark.ray
def test_killed_actor_loses_nothing(ray_session, photos, local_out, tmp_path):
    from patchcolor import batch
    from patchcolor.cluster import RaySettings, run_ray_batch

    out = tmp_path / "ray"
    plan = batch.plan_batch([photos], out, masks=True)
    opts = cli._options(cli.build_parser().parse_args(["colorize", "x", "-o", "y"] + OPTS))
    box: dict = {}
    t = threading.Thread(target=lambda: box.update(s=run_ray_batch(plan, opts, RaySettings(workers=1))))
    t.start()
    _wait_for(lambda: len(list((out / ".patchcolor").glob("*.json"))) >= 1)     # mid-batch
    pids = _worker_pids()
    assert len(pids) == 1
    os.kill(pids[0], signal.SIGKILL)
    t.join(600)
    s = box["s"]
    assert (s.count("done") + s.count("skipped"), s.count("failed"), s.count("not_attempted")) == (5, 1, 0)
    assert _worker_pids() == [] or _worker_pids() != pids                        # a new actor did the rest
    want, got = _files(local_out), _files(out)
    assert sorted(got) == sorted(want) and [k for k in want if want[k] != got[k]] == []


@pytest.mark.ray
def test_resume_after_killed_run_local_and_ray(ray_session, photos, local_out, tmp_path, capsys, models_dir):
    out = tmp_path / "out"
    # started locally on one input ...
    assert cli.main(["colorize", str(photos / "a.jpg"), "-o", str(out)] + OPTS) == 0
    # ... continued on Ray (joining the module's Ray), killed once it has written one more ...
    env = dict(os.environ, PATCHCOLOR_MODELS=str(models_dir))
    p = subprocess.Popen([sys.executable, "-m", "patchcolor.cli", "colorize", str(photos), "-o", str(out),
                          "--ray", "auto"] + OPTS, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         text=True)
    try:
        _wait_for(lambda: len(list((out / ".patchcolor").glob("*.json"))) >= 2 or p.poll() is not None)
    finally:
        p.kill()
    err = p.communicate()[1]
    assert p.returncode == -signal.SIGKILL and "Traceback" not in err       # killed mid-batch
    done_before = len(list((out / ".patchcolor").glob("*.json")))
    assert 2 <= done_before < 5
    # ... and resumed on Ray: what was done is skipped, the rest is done, nothing is lost or duplicated
    capsys.readouterr()
    code, lines = _colorize([photos, "-o", out, "--ray"] + OPTS, capsys)
    assert code == 1 and lines[-1].startswith(f"{5 - done_before} colorized, {done_before} skipped")
    want, got = _files(local_out), _files(out)
    assert sorted(got) == sorted(want) and [k for k in want if want[k] != got[k]] == []
    # a Ray batch resumed locally: nothing left to do but the bad file
    code, lines = _colorize([photos, "-o", out] + OPTS, capsys)
    assert lines[-1].startswith("0 colorized, 5 skipped (already done), 1 failed")
    assert not list(out.rglob(".tmp-*"))          # the killed run's temporary files were cleaned up


@pytest.mark.ray
def test_missing_weights_stop_the_batch(ray_session, photos, tmp_path, capsys):
    """Every image would fail the same way: the batch stops with one line, as locally, and says what was left."""
    (tmp_path / "empty").mkdir()
    code, lines = _colorize([photos, "-o", tmp_path / "out", "--ray", "--models", tmp_path / "empty"] + OPTS,
                            capsys)
    assert code == 1 and any(ln.startswith("error:") and "missing" in ln for ln in lines)
    assert "not attempted (the batch stopped" in lines[-1] and lines[-1].startswith("0 colorized")


@pytest.mark.ray
def test_shared_storage_probe(ray_session, tmp_path):
    from patchcolor.cluster import check_shared_storage

    (tmp_path / "in.png").write_bytes(b"x")
    assert check_shared_storage(tmp_path / "out", tmp_path / "in.png") == 1
    assert list((tmp_path / "out" / ".patchcolor").iterdir()) == []
    from patchcolor.errors import BadOptions

    with pytest.raises(BadOptions, match="does not see the input"):
        check_shared_storage(tmp_path / "out", tmp_path / "missing.png")


@pytest.mark.filterwarnings("ignore")
def test_clear_message_without_ray(monkeypatch, tmp_path, capsys):
    """Where Ray is absent, --ray says how to install it (not marked: runs under -m "not ray" too)."""
    monkeypatch.setitem(sys.modules, "ray", None)
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "a.png")
    code = cli.main(["colorize", str(tmp_path / "a.png"), "-o", str(tmp_path / "o"), "--ray"])
    err = capsys.readouterr().err
    assert code == 1 and "install.py --ray" in err and "Traceback" not in err



def test_install_py_ray_installs_the_extra(tmp_path, monkeypatch):
    """``install.py --ray`` asks pip for ``.[test,ray]`` (not marked: runs without Ray)."""
    import importlib.util

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("patchcolor_install_for_ray_test", root / "install.py")
    inst = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = inst
    spec.loader.exec_module(inst)
    calls: list[list[str]] = []
    monkeypatch.setattr(inst.subprocess, "run",
                        lambda cmd, **kw: calls.append([str(c) for c in cmd]) or subprocess.CompletedProcess(cmd, 0))
    assert inst.parse_args(["--ray"]).ray and not inst.parse_args([]).ray
    inst.pip_install(tmp_path / "python", reinstall=True, ray=True)
    inst.pip_install(tmp_path / "python", reinstall=True)
    assert calls[0][calls[0].index("-e") + 1] == f"{root}[test,ray]"
    assert calls[1][calls[1].index("-e") + 1] == f"{root}[test]"
