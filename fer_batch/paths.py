"""Output paths that stay under the output prefix, whatever the inputs are called.

Output file names are commit ids and content hashes, never input names; `child`
enforces that each segment added to the output root is one plain name, so a key
like ``a/../../x.jpg``, ``/abs.jpg`` or ``%2e%2e`` can never become a path step.
"""

from __future__ import annotations

import re

# Starts with a letter, digit or "_", so never "", ".", ".." or a hidden name; no "/", "\\",
# "%" (no encoded dots or slashes), spaces or non-ASCII look-alikes.
_PLAIN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")


def safe_segment(name: str) -> str:
    """`name` if it is one plain path segment (ASCII letters, digits, ``._-``), else raise."""
    if not _PLAIN.fullmatch(name):
        raise ValueError(f"unsafe output path segment; received: {name!r}")
    return name


def child(root: str, *segments: str) -> str:
    """`root` joined with plain segments (see safe_segment): never a path outside it."""
    return "/".join([root.rstrip("/"), *(safe_segment(s) for s in segments)])
