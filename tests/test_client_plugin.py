"""The GIMP plug-in's logic that needs no GIMP (gimp_plugin/patchcolor_client): config.json and endpoints, the job
runner and its error sentences, a result's stored metadata and mask arithmetic, the dialog's choices from the
registry and Options (dialog.json), and every message the plug-in can show."""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "gimp_plugin"))
from patchcolor_client import dialogspec as ds  # noqa: E402
from patchcolor_client import jobs, launcher, messages  # noqa: E402
from patchcolor_client import protocol as CP  # noqa: E402
from patchcolor_client import resultmeta as rm  # noqa: E402
from patchcolor_client.client import BackendError, BackendUnavailable, ConnectError, WireInstance  # noqa: E402
from patchcolor_client.config import PluginConfig  # noqa: E402


def _gimp_install():
    sys.path.insert(0, str(REPO / "gimp_plugin"))
    try:
        import gimp_install
    finally:
        sys.path.remove(str(REPO / "gimp_plugin"))
    return gimp_install


# ---- config.json and endpoints -------------------------------------------------------------------------------------

def test_endpoint_resolution(tmp_path):
    cfg = PluginConfig({"endpoint": "tcp://127.0.0.1:7000"})
    assert cfg.endpoint("") == "tcp://127.0.0.1:7000"
    assert cfg.endpoint(" tcp://[::1]:1 ") == "tcp://[::1]:1"
    assert PluginConfig({}).endpoint("", "tcp://127.0.0.1:9") == "tcp://127.0.0.1:9"
    assert PluginConfig({}).endpoint("") == CP.DEFAULT_ENDPOINT
    (tmp_path / "config.json").write_text('{"endpoint": "tcp://127.0.0.1:6001", "auto_start": false}')
    loaded = PluginConfig.load(tmp_path / "config.json")
    assert loaded.endpoint() == "tcp://127.0.0.1:6001" and not loaded.auto_start(True)
    (tmp_path / "bad.json").write_text("[1, 2]")
    assert PluginConfig.load(tmp_path / "bad.json").raw == {} and PluginConfig.load(tmp_path / "none").raw == {}
    assert PluginConfig({}).auto_start(True) and not PluginConfig({}).auto_start(False)


def test_recompose_endpoint_follows_a_moved_backend():
    """Recompose goes to the backend that made the result while it answers (it may hold the job), else to the
    endpoint config.json names now; a typed endpoint always wins."""
    alive = set()
    ping = lambda ep, t: ep in alive           # noqa: E731
    cfg = PluginConfig({"endpoint": "tcp://127.0.0.1:6001", "ping_timeout_s": 0.1})
    old = "tcp://127.0.0.1:5555"
    assert cfg.recompose_endpoint("", old, ping) == "tcp://127.0.0.1:6001"
    alive.add(old)
    assert cfg.recompose_endpoint("", old, ping) == old
    assert cfg.recompose_endpoint("tcp://127.0.0.1:7", old, ping) == "tcp://127.0.0.1:7"
    assert PluginConfig({}).recompose_endpoint("", None, ping) == CP.DEFAULT_ENDPOINT


def test_device_reaches_the_started_backend_command():
    cfg = PluginConfig({"backend_command": ["/v/patchcolor", "serve"]})
    assert cfg.with_device("cpu").raw["backend_command"] == ["/v/patchcolor", "serve", "--device", "cpu"]
    assert cfg.with_device(None) is cfg
    fixed = PluginConfig({"backend_command": ["/v/patchcolor", "serve", "--device=cuda"]})
    assert fixed.with_device("cpu") is fixed
    assert launcher.backend_command(cfg.with_device("mps").raw, "tcp://127.0.0.1:1")[-4:] == \
        ["--device", "mps", "--endpoint", "tcp://127.0.0.1:1"]


# ---- the job runner ------------------------------------------------------------------------------------------------

@dataclass
class FakeWatchdog:
    events: list = field(default_factory=list)

    def __call__(self, endpoint, key):
        self.events.append(("start", endpoint))
        return self

    def job(self, job_id, token):
        self.events.append(("job", job_id, token))

    def done(self):
        self.events.append(("done",))


def test_run_job_watchdog_and_one_sentence_errors(monkeypatch):
    """run_job tells the watchdog the job before it runs and 'done' after it, whatever happens, and every backend
    failure becomes a PluginError of one sentence."""
    closed = []

    class FakeClient:
        def close(self):
            closed.append(True)
    monkeypatch.setattr(jobs, "client_for", lambda endpoint, cfg: FakeClient())
    ids = jobs.JobIds.new()
    dog = FakeWatchdog()
    assert jobs.run_job("tcp://127.0.0.1:1", PluginConfig({}), lambda c: 42, ids, watchdog=dog) == 42
    assert dog.events == [("start", "tcp://127.0.0.1:1"), ("job", ids.job_id, ids.token), ("done",)]
    failures = [BackendError("weights_missing", "The R101 detector weights are missing: run `patchcolor weights "
                             "fetch`. File model_final_a3ec72.pkl in /x/models, URL https://example.org/x.pkl."),
                BackendError("image_too_large", "The image has 25000000 pixels. The limit is 500000."),
                BackendError("bad_options", "saturation must be between 0 and 4"),
                BackendUnavailable("no answer from tcp://127.0.0.1:1 within 30 s (1 attempt(s)): is `patchcolor "
                                   "serve` running there?"),
                ConnectError("Talking to a server with CURVE keys (a remote backend) needs pyzmq in this Python.")]
    for err in failures:
        dog = FakeWatchdog()

        def boom(client, err=err):
            raise err
        with pytest.raises(jobs.PluginError) as ei:
            jobs.run_job("tcp://127.0.0.1:1", PluginConfig({}), boom, ids, watchdog=dog)
        text = str(ei.value)
        assert messages.is_one_sentence(text), text
        assert dog.events[-1] == ("done",)
    assert len(closed) == 1 + len(failures)
    texts = [jobs.backend_message(e, "tcp://127.0.0.1:1") for e in failures]
    assert texts[0] == "The R101 detector weights are missing: run `patchcolor weights fetch`."
    assert texts[1].startswith("The image is too large for the colorize backend (the image has 25000000 pixels")
    assert "(bad_options): saturation must be between 0 and 4." in texts[2]
    assert "stopped answering" in texts[3] and "needs pyzmq" in texts[4]


def test_cancel_job_never_raises():
    assert jobs.cancel_job(f"tcp://127.0.0.1:{_free_port()}", PluginConfig({}), jobs.JobIds.new(), 0.2) is False


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- a result's stored metadata ------------------------------------------------------------------------------------

@dataclass
class FakeResult:
    job_id: str
    width: int
    height: int
    fmt: str
    instances: list
    token: str = "t" * 32


def _instances():
    return [WireInstance(0, "person", 0.974, (1.0, 2.0, 5.0, 6.0), (1, 2), (4, 4), bytes([255] * 16)),
            WireInstance(16, "dog", 0.51, (0.0, 0.0, 3.0, 3.0), (0, 0), (3, 3), bytes([255] * 9))]


def test_group_meta_round_trip_and_damage():
    meta = rm.GroupMeta.from_result(FakeResult("job1", 8, 7, "rgb8", _instances()), "tcp://h:1", "gray8", (3, 4),
                                    {"preset": "default"}, hints=1, run=2)
    obj = json.loads(json.dumps(meta.to_json()))
    back = rm.GroupMeta.from_json(obj)
    assert back == meta and back.job_index == [0, 1] and back.run == 2 and back.origin == (3, 4)
    old = {k: v for k, v in obj.items() if k not in ("run", "hints")}        # a result stored before runs
    assert rm.GroupMeta.from_json(old).run == 1
    for broken in (None, [], {**obj, "instances": [{"box": [1, 2]}]}, {**obj, "width": "x"},
                   {**obj, "job_index": [0]}, {k: v for k, v in obj.items() if k != "format"}):
        assert rm.GroupMeta.from_json(broken) is None, broken


def test_job_index_mapping():
    """Masks go to the kept job in its order; an instance the kept job dropped may not be painted back."""
    meta = rm.GroupMeta.from_result(FakeResult("j", 4, 4, "rgb8", _instances()), "e", "rgb8", (0, 0), {}, 0, 1)
    a, b = bytes([255] * 16), bytes([0] * 15 + [255])
    assert meta.kept_job_masks([a, b]) == [a, b]
    meta.job_index = [1, 0]
    assert meta.kept_job_masks([a, b]) == [b, a]
    meta.job_index = [None, 0]
    assert meta.kept_job_masks([bytes(16), b]) == [b]
    assert meta.kept_job_masks([a, b]) is None            # painted back
    meta.job_index = [None, 1]
    assert meta.kept_job_masks([bytes(16), b]) is None    # the job lacks instance 0


def test_instances_for_recolorizing_and_crop_mask():
    w, h = 7, 5
    frame = bytearray(w * h)
    frame[1 * w + 2] = 200
    frame[3 * w + 4] = 255
    frame[2 * w + 3] = 100            # below 50 %: outside
    origin, size, data = rm.crop_mask(bytes(frame), w, h)
    assert origin == (2, 1) and size == (3, 3)
    assert data == bytes([255, 0, 0, 0, 0, 0, 0, 0, 255])
    assert rm.crop_mask(bytes(w * h), w, h) is None
    meta = rm.GroupMeta("j", "e", w, h, "gray8", "rgb8", (0, 0), {}, [
        rm.InstanceRecord(0, "person", 0.9, (0.0, 0.0, 6.0, 4.0)), rm.InstanceRecord(2, "car", 0.8, (1, 1, 2, 2))],
        [0, 1])
    insts, index = meta.instances_for([bytes(frame), bytes(w * h)])
    assert index == [0, None] and len(insts) == 1
    assert (insts[0].class_name, insts[0].mask_origin, insts[0].mask_size) == ("person", (2, 1), (3, 3))


def test_runs_are_named_and_photos_remember_every_run():
    assert rm.instance_layer_name("person", 0.974) == "person 97%"
    assert rm.instance_layer_name("person", 0.974, 2) == "person 97%, run 2"
    assert rm.run_suffix(1) == "" and rm.run_suffix(3) == ", run 3"
    rec = rm.source_record(None, "a")
    rec = rm.source_record(rec, "b")
    assert rec == {"uid": "b", "uids": ["a", "b"]}
    assert rm.is_source_of(rec, "a") and rm.is_source_of(rec, "b") and not rm.is_source_of(rec, "c")
    assert rm.is_source_of({"uid": "old"}, "old")            # a photo layer tagged before runs were numbered
    assert rm.source_record({"uid": "old"}, "new")["uids"] == ["old", "new"]


# ---- the dialog's choices from the registry and Options ------------------------------------------------------------

def test_dialog_spec_follows_the_registry_and_options(tmp_path, monkeypatch):
    """A catalogue with another colorizer and Options with another range give a dialog.json whose choices and
    ranges are those, and the plug-in reads them back (the GIMP test sees them as the procedure's arguments)."""
    from patchcolor import options, registry
    catalog = json.loads(registry.PACKAGE_CATALOG.read_text())
    catalog["models"].append({**catalog["models"][0], "name": "test-colorizer", "label": "Test colorizer (slow)",
                              "optional": True})
    (tmp_path / "catalog.json").write_text(json.dumps(catalog))
    monkeypatch.setenv("PATCHCOLOR_CATALOG", str(tmp_path / "catalog.json"))
    monkeypatch.setitem(options.RANGES, "saturation", (0.0, 3.0))
    gi = _gimp_install()
    spec = gi.dialog_spec()
    plugin = tmp_path / "plugin"
    plugin.mkdir()
    gi.write_dialog_spec(plugin, spec)
    got = ds.load(plugin / ds.SPEC_NAME)
    assert "test-colorizer" in got.names("colorizer")
    entry = [c for c in got.choices["colorizer"] if c.name == "test-colorizer"][0]
    assert entry.label == "Test colorizer (slow)" and entry.optional and "optional weights" in entry.help
    assert got.range("saturation") == (0.0, 3.0)
    assert got.names("detector")[-1] == "none" and got.names("preset")[0] == "default"
    assert got.default("colorizer") == options.DEFAULT.colorizer and got.default("score_thresh") == 0.3


def test_dialog_spec_fallback_only_for_a_missing_file(tmp_path):
    builtin = ds.load(tmp_path / "missing.json")
    assert builtin.source == "built-in" and "eccv16" in builtin.names("colorizer")
    (tmp_path / "dialog.json").write_text("{not json")
    with pytest.raises(ValueError, match="not JSON"):
        ds.load(tmp_path / "dialog.json")
    (tmp_path / "dialog.json").write_text(json.dumps({**ds.BUILTIN, "schema": 99}))
    with pytest.raises(ValueError, match="schema"):
        ds.load(tmp_path / "dialog.json")


def test_builtin_spec_matches_the_backend():
    """The fallback for a missing dialog.json says what the registry and Options say (so it is not stale)."""
    spec = _gimp_install().dialog_spec()
    builtin = ds.parse(ds.BUILTIN)
    written = ds.parse(spec)
    for kind in ("preset", "colorizer", "detector"):
        assert set(builtin.names(kind)) <= set(written.names(kind)), kind
    for name in ("score_thresh", "max_instances", "saturation", "feather"):
        assert builtin.range(name) == written.range(name), name
        assert builtin.default(name) == written.default(name), name


def test_dialog_values_become_backend_options():
    """The Speed choice reaches the backend as its precision (fast = bf16, which the backend runs as fp32 where
    the hardware has no native bf16); feathering is shown in percent."""
    from patchcolor.service.protocol import parse_options
    values = {"preset": "default", "colorizer": "eccv16", "detector": "r101", "score-threshold": 0.3,
              "max-instances": 100, "saturation": 1.0, "feather": 2.0, "precision": "fast"}
    opts = ds.options_from_values(values.__getitem__)
    assert opts["precision"] == "bf16" and opts["feather"] == pytest.approx(0.02)
    parse_options(opts)                                  # valid for the backend
    assert ds.options_from_values({**values, "precision": "fp32"}.__getitem__)["precision"] == "fp32"
    assert [s[0] for s in ds.SPEEDS] == ["fp32", "fast"]


def test_hint_line_says_what_will_run():
    assert ds.effective_colorizer("eccv16", 2, True) == "siggraph17"
    assert ds.effective_colorizer("eccv16", 2, False) == "eccv16"
    assert ds.effective_colorizer("eccv16", 0, True) == "eccv16"
    on = ds.hint_note(1, True, "ECCV16", "Colour hints")
    off = ds.hint_note(3, False, "ECCV16 (Zhang et al. 2016)", "Colour hints")
    none = ds.hint_note(0, True, "ECCV16", "Colour hints")
    assert "1 colour hint in" in on and "SIGGRAPH17 runs" in on
    assert "3 colour hints" in off and "switched off" in off and "ECCV16 (Zhang et al. 2016) runs without" in off
    assert "No colour hints" in none
    for text in (on, off, none):
        assert messages.is_one_sentence(text), text


def test_every_dialog_label_has_its_own_mnemonic():
    """GIMP logs "no mnemonic for property ..." for a label without one; two controls with one letter make Alt+key
    ambiguous. The dialog's buttons count too."""
    labels = [label for label, _ in ds.FIELD_TEXT.values()] + list(ds.DIALOG_BUTTONS)
    keys = [ds.mnemonic(label) for label in labels]
    assert None not in keys, [lab for lab, k in zip(labels, keys) if k is None]
    assert len(set(keys)) == len(keys), sorted(keys)


# ---- messages ------------------------------------------------------------------------------------------------------

def test_every_message_is_one_sentence():
    checked = 0
    for name, template in messages.templates().items():
        text = template.format(**messages.SAMPLES.get(name, {}))
        assert messages.is_one_sentence(text), f"{name}: {text}"
        checked += 1
    assert checked >= 25


def test_launcher_messages_are_one_sentence(tmp_path, monkeypatch):
    monkeypatch.setattr(launcher.tempfile, "gettempdir", lambda: str(tmp_path))
    dead = lambda endpoint, timeout_s: False      # noqa: E731
    cfg = {"backend_command": [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"],
           "log_file": str(tmp_path / "l"), "autostart_command": "python3 /x/install.py --autostart"}
    cases = [("tcp://10.1.2.3:5555", True, cfg), ("tcp://127.0.0.1:9", False, cfg), ("tcp://127.0.0.1:9", True, {}),
             ("tcp://127.0.0.1:9", True, cfg),
             ("tcp://127.0.0.1:9", True, {**cfg, "backend_command": [str(tmp_path / "nothing"), "serve"]})]
    for endpoint, auto, c in cases:
        with pytest.raises(launcher.LaunchError) as ei:
            launcher.ensure_backend(endpoint, auto, c, dead)
        assert messages.is_one_sentence(str(ei.value)), str(ei.value)
    with pytest.raises(launcher.LaunchError) as ei:
        launcher.default_ping()("not an endpoint", 0.1)
    assert messages.is_one_sentence(str(ei.value)), str(ei.value)


def test_one_sentence_checker_can_fail():
    bad = ["Two sentences. Here.", "No period", "Line\nbreak.", "Fetch them with `--optional` yourself)..",
           "Is it running? Start it.", ""]
    for text in bad:
        assert not messages.is_one_sentence(text), text
    good = ["Run `patchcolor weights fetch. Now` once.", "The layer 'A. B' is hidden.",
            "Start it with `python3 install.py --autostart`, or (Image > Mode > RGB) first."]
    for text in good:
        assert messages.is_one_sentence(text), text
    assert messages.first_sentence("First part. Second part.") == "First part"
    assert messages.first_sentence("Only `a. B` here.") == "Only `a. B` here"


def test_a_job_cancelled_before_it_is_sent_is_never_sent(monkeypatch):
    """A dialog closing while its preview's worker is still pinging: the preview request is never sent (the
    backend would otherwise compute it after the plug-in is gone)."""
    from patchcolor_client.client import Client, JobCancelled
    c = Client(f"tcp://127.0.0.1:{_free_port()}", timeout_s=0.5)
    sent = []
    monkeypatch.setattr(c, "ping", lambda *a: 0.0)
    monkeypatch.setattr(c, "_send", lambda header, data=(), track=False: sent.append(header))
    try:
        with pytest.raises(JobCancelled):
            c.preview(2, 2, "gray8", bytes(4), {}, should_cancel=lambda: True, job_id="a" * 32, token="t" * 32)
    finally:
        c.close()
    assert sent == []


def test_progress_text_says_what_runs_and_the_time_left():
    from patchcolor_client.client import Stage
    s = Stage("segment", "Detecting objects: backbone 2/4", 12.4)
    assert s == "segment" and s.text.endswith("2/4") and s.eta == 12.4
    assert jobs.progress_text(s, s.text, s.eta) == "Detecting objects: backbone 2/4\u2026 about 12 s left"
    assert jobs.progress_text("colorize") == "Colorizing\u2026"
    assert jobs.progress_text("finish", None, 200.0) == "Finishing\u2026 about 3 min left"
    assert jobs.progress_text("new_stage") == "New stage\u2026"
    bare = Stage("fuse", None, "x")
    assert bare.text is None and bare.eta is None
