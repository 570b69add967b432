"""precision.py: the CPU report (model, native bf16) and the "fast" choice, with the native-kernel probe
patched both ways (no machine here has both)."""
from __future__ import annotations

import pytest
import torch

from patchcolor import precision as prec
from patchcolor import winograd

XEON = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8488C
flags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_tile amx_bf16 amx_int8
"""
EPYC = """processor\t: 0
model name\t: AMD EPYC 7B12
flags\t\t: fpu sse avx2 fma
"""


@pytest.mark.parametrize("cpuinfo,native", [(XEON, True), (EPYC, False)])
def test_cpu_report_reads_model_flags_and_probe(tmp_path, monkeypatch, cpuinfo, native):
    f = tmp_path / "cpuinfo"
    f.write_text(cpuinfo)
    monkeypatch.setattr(prec, "CPUINFO", f)
    monkeypatch.setattr(prec, "_cpu_native", lambda p: native and p == "bf16")
    r = prec.cpu_report()
    assert r.model == ("Intel(R) Xeon(R) Platinum 8488C" if native else "AMD EPYC 7B12")
    assert r.native_bf16 is native and r.native_fp16 is False
    assert r.flags == (("avx512_bf16", "amx_bf16") if native else ())
    assert r.model in r.line() and ("bf16 native" in r.line()) is native
    assert r.to_dict()["native_bf16"] is native
    assert ("conv Winograd" in r.line()) is r.winograd is winograd.winograd_enabled("cpu")
    assert prec.fast_precision(torch.device("cpu")) == ("bf16" if native else None)
    # the precision that runs follows the same probe: bf16 where native, fp32 (with the reason) where not
    ran, why = prec.effective_precision(torch.device("cpu"), "bf16")
    assert (ran, why is None) == (("bf16", True) if native else ("fp32", False))


def test_cpu_report_without_proc_cpuinfo(tmp_path, monkeypatch):
    monkeypatch.setattr(prec, "CPUINFO", tmp_path / "missing")
    r = prec.cpu_report()
    assert r.model and r.flags == () and r.cores >= 1
