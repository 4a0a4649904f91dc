"""The ```python blocks of docs/python.md and README.md run as written (each in a fresh namespace). Blocks that
import torch (or ml_dtypes) are skipped, with the reason, where it is not installed."""

from __future__ import annotations

import pathlib
import re
import sys
import types

import pytest

from conftest import HAVE_ML_DTYPES, HAVE_TORCH, NO_TORCH_REASON

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOCS = [ROOT / "docs" / "python.md", ROOT / "README.md"]
BLOCKS = [
    (doc, code)
    for doc in DOCS
    for code in re.findall(r"^```python\n(.*?)^```", doc.read_text(), flags=re.M | re.S)
]


def test_doc_has_examples():
    assert sum(doc.name == "python.md" for doc, _ in BLOCKS) >= 5
    assert sum(doc.name == "README.md" for doc, _ in BLOCKS) >= 1


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_doc_example_runs(index):
    doc, code = BLOCKS[index]
    if re.search(r"^import torch|^from torch|attend\.torch", code, flags=re.M) and not HAVE_TORCH:
        pytest.skip(NO_TORCH_REASON)
    if re.search(r"^import ml_dtypes", code, flags=re.M) and not HAVE_ML_DTYPES:
        pytest.skip("ml_dtypes is not installed (scripts/setup installs it)")
    # A real (registered) module: torch.compile inside a block looks its globals' module up by name.
    module = types.ModuleType(f"doc_block_{index}")
    sys.modules[module.__name__] = module
    try:
        exec(compile(code, f"{doc}:block{index}", "exec"), module.__dict__)
    finally:
        del sys.modules[module.__name__]
