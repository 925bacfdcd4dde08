"""The docs checks can fail: Sphinx roles are rewritten, and a rendered role fails the site check."""

# convert_roles: skip (Sphinx roles shown on purpose)
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

EXT = Path(__file__).resolve().parents[1] / "docs" / "_ext"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"docs_ext_{name}", EXT / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize(
    ("role", "plain"),
    [
        (":func:`apply_transition`", "`apply_transition`"),
        (":class:`~torch.optim.Adam`", "`Adam`"),
        (":meth:`Curriculum.freeze`", "`Curriculum.freeze`"),
        (":attr:`Schedule.rules`", "`Schedule.rules`"),
        (":mod:`funcurriculum.distributed`", "`funcurriculum.distributed`"),
        (":data:`NORM_LAYERS`", "`NORM_LAYERS`"),
        (":exc:`ValueError`", "`ValueError`"),
        (":obj:`x`", "`x`"),
        (":py:func:`x`", "`x`"),
        (":class:`the optimizer <funcurriculum.Optimizer>`", "`the optimizer`"),
        (":func:`!x`", "`x`"),
    ],
)
def test_convert_roles(role, plain):
    conv = load("convert_roles")
    assert conv.convert(f"see {role}, then") == (f"see {plain}, then", 1)


def test_convert_roles_files(tmp_path):
    conv = load("convert_roles")
    py = tmp_path / "m.py"
    py.write_text('"""Uses :func:`f` and :class:`~a.B`."""\n')
    md = tmp_path / "p.md"
    md.write_text("A :meth:`C.d` here; ``code`` stays.\n")
    assert conv.main(["--check", str(tmp_path)]) == 1
    assert "f" in py.read_text() and ":func:" in py.read_text()  # --check changes nothing
    assert conv.main([str(tmp_path)]) == 0
    assert py.read_text() == '"""Uses ``f`` and ``B``."""\n'  # .py: the docstrings' ``x``
    assert md.read_text() == "A `C.d` here; ``code`` stays.\n"
    assert conv.main(["--check", str(tmp_path)]) == 0


def test_check_site_fails_on_a_rendered_role(tmp_path, capsys):
    check = load("check_site")
    site = tmp_path / "site"
    (site / "api").mkdir(parents=True)
    (site / "index.html").write_text("<p>Plain <code>x</code> text.</p>")
    assert check.main([str(site)]) == 0
    (site / "api" / "index.html").write_text("<p>moves state with :func:<code>apply</code>.</p>")
    assert check.main([str(site)]) == 1
    out = capsys.readouterr().out
    assert "api/index.html: 1 Sphinx role(s)" in out and ":func:apply" in out


def test_check_site_fails_without_pages(tmp_path):
    assert load("check_site").main([str(tmp_path)]) == 1
