"""Every docstring example in the package runs, and every public name is documented."""

from __future__ import annotations

import doctest
import importlib
import inspect
import pkgutil
import re
import sys
import textwrap
import types
from pathlib import Path

import pytest
import torch

import funcurriculum as fc

OPTIONS = doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS


def _modules() -> list[str]:
    names = [fc.__name__]
    for info in pkgutil.walk_packages(fc.__path__, prefix=fc.__name__ + "."):
        names.append(info.name)
    return sorted(names)


MODULES = _modules()


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=OPTIONS, verbose=False, report=True)
    assert result.failed == 0, f"{result.failed} doctest example(s) failed in {name}"


def test_examples_exist():
    """The package is not silently doctest-free (finder sees the examples)."""
    finder = doctest.DocTestFinder()
    total = sum(len(t.examples) for n in MODULES for t in finder.find(importlib.import_module(n)))
    assert total >= 50


def _public() -> list[tuple[str, object]]:
    out = []
    for name in fc.__all__:
        obj = getattr(fc, name)
        if inspect.isfunction(obj) or inspect.isclass(obj):
            out.append((name, obj))
    return out


def _has_params(obj) -> bool:
    target = obj.__init__ if inspect.isclass(obj) else obj
    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError):  # pragma: no cover - builtins
        return False
    return any(p.name not in ("self", "cls") for p in sig.parameters.values())


def _returns_something(fn) -> bool:
    try:
        ann = inspect.signature(fn).return_annotation
    except (TypeError, ValueError):  # pragma: no cover
        return True
    return ann not in (None, "None", inspect.Signature.empty)


@pytest.mark.parametrize("name,obj", _public(), ids=[n for n, _ in _public()])
def test_public_names_are_documented(name, obj):
    doc = inspect.getdoc(obj) or ""
    assert doc.strip(), f"fc.{name} has no docstring"
    if inspect.isclass(obj) and getattr(obj, "_is_protocol", False):
        return  # an interface (e.g. LeafRule): described, not called
    assert ">>>" in doc, f"fc.{name}'s docstring has no example"
    if _has_params(obj):
        assert "Args:" in doc or "Attributes:" in doc, f"fc.{name}'s docstring has no Args section"
    if inspect.isfunction(obj) and _returns_something(obj):
        assert "Returns:" in doc or "Yields:" in doc, f"fc.{name}'s docstring has no Returns"


# -- Markdown pages: their ```python blocks run, top to bottom, one namespace per page ------
# (```py blocks show other libraries' code, e.g. the left tabs of the migration guides,
# and are not run.)
ROOT = Path(__file__).resolve().parents[1]
PAGES = [
    "README.md",
    "docs/index.md",
    "docs/quickstart.md",
    "docs/concepts.md",
    "docs/ensembles.md",
    "docs/migration.md",
    "docs/custom_optimizers.md",
    "docs/composing.md",
    "docs/performance.md",
    "docs/catalogue.md",
    "docs/recipes.md",
]
_BLOCK = re.compile(r"^( *)```python\n(.*?)^\1```", re.S | re.M)


def python_blocks(text: str) -> list[str]:
    return [textwrap.dedent(m.group(2)) for m in _BLOCK.finditer(text)]


def test_block_extraction_handles_tabs():
    text = 'a\n\n```python\nx = 1\n```\n\n=== "t"\n\n    ```python\n    y = x + 1\n    ```\n\n```py\nnot run\n```\n'
    assert python_blocks(text) == ["x = 1\n", "y = x + 1\n"]


@pytest.mark.parametrize("page", PAGES)
def test_markdown_snippets_run(page, capsys):
    path = ROOT / page
    blocks = python_blocks(path.read_text())
    assert blocks, f"{page} has no python blocks"
    module = types.ModuleType(f"snippets_{path.stem}")  # a real module: dataclasses need one
    namespace = module.__dict__
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is fastest (and fair on shared CPUs)
    sys.modules[module.__name__] = module
    try:
        with torch.random.fork_rng():
            _run_blocks(page, blocks, namespace)
    finally:
        torch.set_num_threads(threads)
        del sys.modules[module.__name__]


_REQUIRES = re.compile(r"\A# requires: *(.+)\n")


def _missing(code: str) -> list[str]:
    """Optional packages a block names on its first line (``# requires: transformers``)
    that are not importable."""
    m = _REQUIRES.match(code)
    if not m:
        return []
    out = []
    for name in (n.strip() for n in m.group(1).split(",")):
        try:
            importlib.import_module(name)
        except ImportError:
            out.append(name)
    return out


def test_requires_marker():
    assert _missing("# requires: torch\nx = 1\n") == []
    assert _missing("# requires: torch, not_a_package_xyz\n") == ["not_a_package_xyz"]
    assert _missing("x = 1  # requires: not_a_package_xyz\n") == []


def _run_blocks(page: str, blocks: list[str], namespace: dict) -> None:
    """Run the blocks in order; a block whose optional packages are missing is skipped
    (the rest still run), and the page then reports a skip naming them."""
    skipped: dict[str, None] = {}
    for i, code in enumerate(blocks):
        missing = _missing(code)
        if missing:
            skipped.update(dict.fromkeys(missing))
            continue
        try:
            exec(compile(code, f"{page}[block {i}]", "exec"), namespace)
        except Exception as exc:  # pragma: no cover - the failure message
            raise AssertionError(f"{page}, python block {i} failed:\n{code}") from exc
    if skipped:
        pytest.skip(f"{page}: blocks needing {list(skipped)} skipped (pip install '.[hf]')")


def test_every_public_name_has_an_api_entry_in_the_docs():
    """Each name of ``fc.__all__`` / ``fc.distributed.__all__`` is rendered by mkdocstrings."""
    import funcurriculum.distributed as fcd

    text = "\n".join(p.read_text() for p in (ROOT / "docs").glob("*.md"))
    rendered = set(re.findall(r"^:::\s+(\S+)", text, re.M))
    wanted = [f"funcurriculum.{n}" for n in fc.__all__]
    wanted += [f"funcurriculum.distributed.{n}" for n in fcd.__all__]
    missing = [n for n in wanted if n not in rendered]
    assert not missing, f"no `::: name` API entry in docs/ for {missing}"
