"""Griffe extension for the docs build: ``Example:`` sections render as examples.

The package's docstrings follow the Google style but title their runnable examples
``Example:``; Google-style parsers only know ``Examples:`` and would render the
singular as an admonition of plain Markdown (where ``x["a"]`` even reads as a link).
This extension renames the heading before the docstring is parsed. Docs build only.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_HEADING = re.compile(r"^(\s*)Example:[ \t]*$", re.MULTILINE)


class ExampleSections(griffe.Extension):
    """Treat ``Example:`` like ``Examples:`` in every docstring."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        doc = obj.docstring
        if doc is not None and "Example:" in doc.value:
            doc.value = _HEADING.sub(r"\1Examples:", doc.value)
