"""Strip outputs, execution counts and volatile metadata from notebooks.

Usage: python scripts/strip_notebooks.py [NOTEBOOK ...]   (default: every notebook under book/)

The book stores notebooks without outputs (tests/test_book.py checks it); the build
and nbval execute them afresh. Exit status 0; prints the notebooks it changed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
# Cell metadata written by Jupyter front ends at run time; everything else (tags, mystnb) is kept.
VOLATILE_CELL_METADATA = ("execution", "collapsed", "scrolled", "ExecuteTime")
VOLATILE_NB_METADATA = ("widgets", "varInspector", "toc")


def strip(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    for cell in nb.cells:
        for key in VOLATILE_CELL_METADATA:
            cell.metadata.pop(key, None)
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    for key in VOLATILE_NB_METADATA:
        nb.metadata.pop(key, None)
    return nb


def main(argv: list[str]) -> int:
    paths = [Path(a) for a in argv] or sorted(
        p for p in (ROOT / "book").rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts
    )
    for path in paths:
        text = path.read_text(encoding="utf-8")
        nb = strip(nbformat.reads(text, as_version=4))
        new = nbformat.writes(nb) + "\n"
        if new != text:
            path.write_text(new, encoding="utf-8")
            print(f"stripped {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
