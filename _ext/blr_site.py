"""The book's Sphinx extension (loaded from _config.yml: sphinx.local_extensions).

1. Author-year labels in the bibliography: the pybtex style ``blr_authoryear``
   ("Khan and Rue, 2023"; "Osawa et al., 2019"; a, b, ... for equal labels), sorted by
   author, year and title, as the text cites them.
2. Offline math for the test build: with ``BLR_BOOK_OFFLINE_MATH=1`` in the environment,
   MathJax 3 is served from the npm package in ``node_modules/mathjax`` (``npm ci``; the
   Makefile does it) instead of the CDN, so the site reads without internet and the
   browser test (tests/test_site.py) does not depend on the network.
3. Downloads that carry outputs: after the build, each notebook page's ``.ipynb``
   download (``_sources/<page>.ipynb``) is replaced by the executed notebook that
   myst-nb wrote to ``_build/jupyter_execute``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pybtex.plugin
from pybtex.richtext import Text
from pybtex.style.formatting.plain import Style as PlainStyle
from pybtex.style.labels import BaseLabelStyle
from sphinx.errors import ExtensionError
from sphinx.util import logging

logger = logging.getLogger(__name__)

OFFLINE_MATH_ENV = "BLR_BOOK_OFFLINE_MATH"
MATHJAX_SCRIPT = "es5/tex-mml-chtml.js"


# ---------------------------------------------------------------- bibliography labels
def _last_name(person) -> str:
    return Text.from_latex(" ".join(person.prelast_names + person.last_names)).render_as("text")


def author_year_label(entry) -> str:
    """'Khan, 2023', 'Khan and Rue, 2023' or 'Osawa et al., 2019'."""
    persons = entry.persons.get("author") or entry.persons.get("editor") or []
    names = [_last_name(p) for p in persons]
    if not names:
        who = Text.from_latex(entry.fields.get("key", entry.key)).render_as("text")
    elif len(names) == 1:
        who = names[0]
    elif len(names) == 2:
        who = f"{names[0]} and {names[1]}"
    else:
        who = f"{names[0]} et al."
    return f"{who}, {entry.fields.get('year', 'n.d.')}"


class AuthorYearLabelStyle(BaseLabelStyle):
    def format_labels(self, sorted_entries):
        entries = list(sorted_entries)
        labels = [author_year_label(e) for e in entries]
        seen: dict[str, int] = {}
        for label in labels:
            seen[label] = seen.get(label, 0) + 1
        suffix: dict[str, int] = {}
        for label in labels:
            if seen[label] == 1:
                yield label
            else:
                k = suffix.get(label, 0)
                suffix[label] = k + 1
                yield label + "abcdefghijklmnopqrstuvwxyz"[k]


class AuthorYearStyle(PlainStyle):
    default_label_style = "blr_authoryear"
    default_sorting_style = "author_year_title"


pybtex.plugin.register_plugin("pybtex.style.labels", "blr_authoryear", AuthorYearLabelStyle)
pybtex.plugin.register_plugin("pybtex.style.formatting", "blr_authoryear", AuthorYearStyle)


# ---------------------------------------------------------------- offline MathJax
def _offline_math(app, config) -> None:
    if os.environ.get(OFFLINE_MATH_ENV, "") not in ("1", "true", "yes"):
        return
    package = Path(app.srcdir) / "node_modules" / "mathjax"
    if not (package / MATHJAX_SCRIPT).is_file():
        raise ExtensionError(
            f"{OFFLINE_MATH_ENV}=1 but {package / MATHJAX_SCRIPT} is missing: run `npm ci` "
            "in the repository root (the Makefile's `mathjax` target does it)"
        )
    # html_static_path copies the folder's contents into _static/, hence _static/es5/...
    config.html_static_path = list(config.html_static_path) + [str(package)]
    config.mathjax_path = MATHJAX_SCRIPT
    logger.info(f"[blr_site] MathJax from {package / MATHJAX_SCRIPT} (offline)")


# ---------------------------------------------------------------- executed downloads
def _executed_downloads(app, exception) -> None:
    if exception is not None or app.builder.format != "html":
        return
    executed = Path(app.outdir).parent / "jupyter_execute"
    sources = Path(app.outdir) / "_sources"
    copied = 0
    for docname in sorted(app.env.found_docs):
        if not app.env.doc2path(docname).endswith(".ipynb"):
            continue
        done = executed / f"{docname}.ipynb"
        target = sources / f"{docname}.ipynb"
        if done.is_file() and target.parent.is_dir():
            shutil.copyfile(done, target)
            copied += 1
    logger.info(f"[blr_site] {copied} executed notebooks copied to _sources/ (downloads)")


def setup(app):
    app.connect("config-inited", _offline_math)
    app.connect("build-finished", _executed_downloads)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
