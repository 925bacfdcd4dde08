"""Rewrite Sphinx roles (":func:`x`", ":class:`~a.b.C`", ...) as plain Markdown code.

The docs site is mkdocs + mkdocstrings (Markdown), where a Sphinx role renders as the
literal text ``:func:`x```. This script rewrites every role in the given ``.py`` and
``.md`` files to plain backtick code, keeping what the reader would have seen in
Sphinx:

* ``:func:`apply_transition``` -> ``apply_transition`` as code
* ``:class:`~torch.optim.Adam``` -> ``Adam`` (``~``: the last component only)
* ``:meth:`Curriculum.freeze``` -> ``Curriculum.freeze``
* ``:class:`title <target>``` -> ``title``
* ``:func:`!x``` -> ``x``

In ``.py`` files the code is quoted with double backticks, the docstrings' house style
(a Markdown code span too); in ``.md`` files with single ones.

Plain code rather than ``[x][funcurriculum.x]`` cross-references: a cross-reference
to a name mkdocstrings does not render (a private helper, a method of a class shown
without members, a torch name) is a warning, so an error, in ``mkdocs build --strict``;
plain code always renders. Add cross-references by hand where a link is worth it.

Roles inside double-backtick literals in docstrings (``:func:`x``` written as an
example of the syntax) are rewritten too; a role escaped as text is rare enough to
fix by hand.

Usage:
  python docs/_ext/convert_roles.py PATH...          rewrite in place, list changed files
  python docs/_ext/convert_roles.py --check PATH...  change nothing; exit 1 if a role is found

Directories are searched recursively for ``*.py`` and ``*.md``. A file that shows
roles on purpose (this script, its tests) says so with the comment ``convert_roles: skip``.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterator
from pathlib import Path

SKIP = "convert_roles: " + "skip"  # a file holding this marker is left alone
ROLES = ("func", "class", "meth", "attr", "mod", "data", "exc", "obj", "const", "any")
# optional domain ("py:"), the role, then a backtick-quoted target
ROLE = re.compile(r":(?:py:)?(?:" + "|".join(ROLES) + r"):`([^`\n]+)`")


def _display(target: str) -> str:
    """What Sphinx would show for a role's content."""
    target = target.strip()
    m = re.fullmatch(r"(.+?)\s*<([^<>]+)>", target)
    if m:  # explicit title: :class:`the optimizer <a.b.Opt>`
        return m.group(1).strip()
    target = target.lstrip("!")
    if target.startswith("~"):
        return target[1:].rsplit(".", 1)[-1]
    return target


def convert(text: str, ticks: str = "`") -> tuple[str, int]:
    """``text`` with every role rewritten as code quoted by ``ticks``; returns ``(new, count)``.

    Example:
      >>> convert("see :func:`~funcurriculum.schedule.apply_transition` and :class:`Schedule`")
      ('see `apply_transition` and `Schedule`', 2)
    """
    return ROLE.subn(lambda m: f"{ticks}{_display(m.group(1))}{ticks}", text)


def _files(paths: list[str]) -> Iterator[Path]:
    for p in map(Path, paths):
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                if f.suffix in (".py", ".md") and f.is_file() and "site" not in f.parts:
                    yield f
        elif p.is_file():
            yield p
        else:
            raise SystemExit(f"convert_roles: no such file or directory: {p}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="+")
    ap.add_argument("--check", action="store_true", help="report roles, change nothing")
    args = ap.parse_args(argv)
    total = 0
    for f in _files(args.paths):
        text = f.read_text(encoding="utf-8")
        if SKIP in text:
            continue  # a file that shows roles on purpose (this one, its tests)
        # docstrings here quote code RST-style (``x``, also a Markdown code span); pages `x`
        new, n = convert(text, "``" if f.suffix == ".py" else "`")
        if n:
            total += n
            print(f"{f}: {n} role{'s' if n > 1 else ''}")
            if not args.check:
                f.write_text(new, encoding="utf-8")
    if args.check and total:
        print(f"convert_roles: {total} Sphinx role(s) found", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
