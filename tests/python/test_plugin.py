"""Backends from shared libraries (include/attend/plugin.h): the C test plugin of
tests/plugin/naive_plugin.c, compiled here with the system C compiler, loads through
attend.load_plugin, is listed and explained, runs by name and matches the float64 reference;
bad paths and repeated names raise the documented errors."""

from __future__ import annotations

import pathlib
import shutil
import subprocess

import numpy as np
import pytest

import attend
from conftest import assert_close, reference

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        pytest.skip("no C compiler on PATH to build the test plugin")
    out = tmp_path_factory.mktemp("plugin") / "naive_plugin.so"
    subprocess.run(
        [cc, "-shared", "-fPIC", "-O2", "-fvisibility=hidden", f"-I{ROOT / 'include'}",
         str(ROOT / "tests" / "plugin" / "naive_plugin.c"), "-o", str(out), "-lm"],
        check=True,
    )
    return str(out)


@pytest.fixture(scope="module")
def loaded(plugin_path: str) -> str:
    if "naive_plugin" in [b["name"] for b in attend.backends()]:
        return "naive_plugin"  # loaded by an earlier module of this session
    return attend.load_plugin(plugin_path)


def test_load_lists_and_runs_by_name(loaded: str) -> None:
    assert loaded == "naive_plugin"
    info = next(b for b in attend.backends() if b["name"] == loaded)
    assert info["dtypes"] == ["float32"] and "causal" in info["features"]
    rng = np.random.default_rng(7)
    q = rng.standard_normal((2, 17, 4, 32), dtype=np.float32)
    k = rng.standard_normal((2, 29, 2, 32), dtype=np.float32)
    v = rng.standard_normal((2, 29, 2, 32), dtype=np.float32)
    out, lse = attend.attention(q, k, v, backend=loaded, causal=True, causal_align="bottom_right", return_lse=True)
    want, want_lse = reference(q, k, v, causal=True, causal_align="bottom_right")
    assert_close(out, want, "f32")
    assert_close(lse, want_lse, "f32", what="lse", lse=True)


def test_explain_gives_the_plugins_reason(loaded: str) -> None:
    q = np.zeros((1, 8, 2, 16), dtype=np.float16)
    lines = {e.backend: e for e in attend.explain(q, q, q)}
    assert not lines[loaded].supported
    assert "dtype must be f32; got f16" in lines[loaded].reason


def test_bad_paths_and_repeats_raise(loaded: str, plugin_path: str) -> None:
    with pytest.raises(ValueError, match="cannot load"):
        attend.load_plugin("/nonexistent/libnothing.so")
    with pytest.raises(ValueError, match="naive_plugin"):
        attend.load_plugin(plugin_path)  # its name is taken
    with pytest.raises(TypeError, match="path must be a str"):
        attend.load_plugin(42)  # type: ignore[arg-type]
