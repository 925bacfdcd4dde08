"""Fail when the built docs site shows a Sphinx role as literal text.

mkdocstrings renders Markdown, so a docstring's ":func:`x`" reaches the page as
``:func:<code>x</code>``. This check reads every HTML page of a built site and
exits 1, listing page, count and an excerpt, when such text appears (rewrite the
source with ``python docs/_ext/convert_roles.py PATH``). It also fails on a site
with no pages, so a missing build cannot pass.

Usage: python docs/_ext/check_site.py site/
"""

# convert_roles: skip (Sphinx roles shown on purpose)
from __future__ import annotations

import html
import re
import sys
from pathlib import Path

ROLES = ("func", "class", "meth", "attr", "mod", "data", "exc", "obj", "const", "any")
# the role's name, then the start of its rendered target: a backtick or a <code> tag
RENDERED_ROLE = re.compile(r":(?:py:)?(?:" + "|".join(ROLES) + r"):(?:`|<code\b)")


def find_roles(page: str) -> list[str]:
    """Excerpts (tags stripped) around each literal Sphinx role in an HTML page."""
    out = []
    for m in RENDERED_ROLE.finditer(page):
        excerpt = page[max(m.start() - 40, 0) : m.end() + 60]
        out.append(html.unescape(re.sub(r"<[^>]*>?", "", excerpt)).replace("\n", " ").strip())
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    site = Path(args[0])
    pages = sorted(site.rglob("*.html")) if site.is_dir() else []
    if not pages:
        print(f"check_site: no HTML pages under {site} (build the site first)", file=sys.stderr)
        return 1
    bad = 0
    for p in pages:
        hits = find_roles(p.read_text(encoding="utf-8", errors="replace"))
        if hits:
            bad += len(hits)
            print(f"{p}: {len(hits)} Sphinx role(s), e.g. ...{hits[0]}...")
    if bad:
        print(
            f"check_site: {bad} Sphinx role(s) rendered literally in {site}; rewrite them "
            "with python docs/_ext/convert_roles.py",
            file=sys.stderr,
        )
        return 1
    print(f"check_site: {len(pages)} pages, no Sphinx roles")
    return 0


if __name__ == "__main__":
    sys.exit(main())
