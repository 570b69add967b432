"""The front door: ``from patchcolor import colorize`` is the function whatever was imported before it."""
from __future__ import annotations

import pkgutil
import subprocess
import sys

import patchcolor


def test_no_module_shadows_an_export():
    """A submodule named like an export would replace it in the package namespace once imported."""
    modules = {m.name for m in pkgutil.iter_modules(patchcolor.__path__)}
    assert modules, "the package lists no modules"
    assert not modules & set(patchcolor.__all__), modules & set(patchcolor.__all__)


def test_colorize_is_the_function_after_the_pipeline_is_imported():
    """In a fresh interpreter (nothing cached): the pipeline imports every step's module, then the name is asked."""
    code = ("import patchcolor.pipeline, patchcolor.api\n"
            "from patchcolor import colorize\n"
            "assert colorize is patchcolor.api.colorize, colorize\n"
            "print(colorize.__module__, colorize.__name__)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["patchcolor.api", "colorize"]
