"""The book's Sphinx extension (loaded from _config.yml: sphinx.local_extensions).

1. Author-year labels in the bibliography: the pybtex style ``blr_authoryear``
   ("Khan and Rue, 2023"; "Osawa et al., 2019"; a, b, ... for equal labels), sorted by
   author, year and title, as the text cites them.
2. Offline math for the test build: with ``BLR_BOOK_OFFLINE_MATH=1`` in the environment,
   MathJax 3 is served from the npm package in ``node_modules/mathjax`` (``npm ci``; the
   Makefile does it) instead of the CDN, so the site reads without internet and the
   browser test (tests/test_site.py) does not depend on the network.
3. The API reference: in ``book/reference/api.md`` the line ``% blrlib-api`` is replaced,
   when the page is read, by one section per public module of blrlib (found with
   pkgutil, so a new module is documented without editing the page), each an
   ``automodule`` with its members.
4. Glued NumPy scalars: NumPy 2 writes ``np.float64(0.25)`` as the text of a glued
   ``np.float64``, which myst-nb's ``{glue:text}`` formatting (``:.3f``) cannot read;
   the number inside is passed on instead.
5. Downloads that carry outputs: after the build, each notebook page's ``.ipynb``
   download (``_sources/<page>.ipynb``) is replaced by the executed notebook that
   myst-nb wrote to ``_build/jupyter_execute``.
"""

from __future__ import annotations

import importlib
import inspect
import os
import pkgutil
import re
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


# ---------------------------------------------------------------- API reference
API_MARKER = "% blrlib-api"


def public_modules(package: str = "blrlib") -> list[str]:
    """The package and every submodule with no ``_``-prefixed part, sorted."""
    pkg = importlib.import_module(package)
    names = [package] + [
        info.name for info in pkgutil.walk_packages(pkg.__path__, package + ".")
        if not any(part.startswith("_") for part in info.name.split("."))
    ]
    return sorted(names)


def documented_members(name: str, claimed: set[str]) -> list[str]:
    """The names that module ``name`` documents: those of its ``__all__`` (or its public
    names) that it defines; a name defined in a private module is documented by the
    first public module that exports it. Constants count as defined where exported."""
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    if exported is None:
        exported = [n for n in vars(module) if not n.startswith("_")]
    is_package = hasattr(module, "__path__")
    out = []
    for member in exported:
        obj = getattr(module, member, None)
        if inspect.ismodule(obj):
            continue
        home = getattr(obj, "__module__", None) if (inspect.isclass(obj) or callable(obj)) else None
        if home is None:
            mine = not is_package
        elif home == name:
            mine = True
        else:
            mine = any(part.startswith("_") for part in home.split(".")[1:])
        key = f"{home or name}.{member}"  # an alias (f = g) is documented under its own name
        if mine and key not in claimed:
            claimed.add(key)
            out.append(member)
    return out


def _undocumented_data(name: str, members: list[str]) -> list[str]:
    """Module-level data among ``members`` without a ``#:`` doc comment (automodule skips
    those even with :undoc-members:; an explicit autodata documents them)."""
    from sphinx.pycode import ModuleAnalyzer

    module = importlib.import_module(name)
    try:
        documented = {attr for (_, attr) in ModuleAnalyzer.for_module(name).find_attr_docs()}
    except Exception:  # no source to analyse
        documented = set()
    return [m for m in members
            if not (inspect.isclass(getattr(module, m)) or callable(getattr(module, m)))
            and m not in documented]


def api_sections() -> str:
    modules = public_modules()
    claimed: set[str] = set()
    members = {name: documented_members(name, claimed) for name in modules}
    # a name that a package exports but that its defining (public) module does not list
    # in its own __all__ is documented with that module
    for name in modules:
        module = importlib.import_module(name)
        for member in getattr(module, "__all__", []):
            obj = getattr(module, member, None)
            home = getattr(obj, "__module__", None) if inspect.isclass(obj) or callable(obj) else None
            key = f"{home}.{member}"
            if home in members and key not in claimed and getattr(obj, "__name__", "") == member:
                claimed.add(key)
                members[home].append(member)
    out = []
    for name in modules:
        data = _undocumented_data(name, members[name])
        listed = [m for m in members[name] if m not in data]
        # autodoc writes reStructuredText, so the directives sit in an eval-rst block
        options = f"   :members: {', '.join(listed)}\n   :undoc-members:\n" if listed else ""
        extra = "".join(f"\n.. autodata:: {name}.{m}\n" for m in data)
        out.append(f"## `{name}`\n\n```{{eval-rst}}\n.. automodule:: {name}\n{options}"
                   f"   :show-inheritance:\n{extra}```\n")
    return "\n".join(out)


# Docstrings that are not valid reStructuredText (a list without a blank line before it,
# an unclosed `...`) are shown verbatim, as a literal block, instead of failing the -W
# build; the build log names them (``[blr_site] docstring shown verbatim``).
_HARMLESS = ("Unknown interpreted text role", "Unknown directive type", "No role entry",
             "No directive entry", 'Unknown target name', "Trying")


def _rst_problems(lines: list[str], env=None) -> list[str]:
    import docutils.core
    import docutils.utils

    text = "\n".join(lines)
    doctree = docutils.core.publish_doctree(
        text, settings_overrides={"report_level": 5, "halt_level": 5, "warning_stream": False, "env": env})
    problems = []
    for msg in doctree.findall(docutils.nodes.system_message):
        body = msg.astext()
        if msg["level"] >= 2 and not any(h in body for h in _HARMLESS):
            problems.append(body.splitlines()[0])
    return problems


def _docstring_fallback(app, what, name, obj, options, lines) -> None:
    if not lines or not _rst_problems(lines, app.env):
        return
    logger.info(f"[blr_site] docstring shown verbatim (not valid reST): {name}")
    body = ["   " + line if line.strip() else "" for line in lines]
    lines[:] = [".. code-block:: text", "   :class: blr-verbatim", ""] + body + [""]


def _api_page(app, docname, source) -> None:
    if API_MARKER in source[0]:
        source[0] = source[0].replace(API_MARKER, api_sections())


# ---------------------------------------------------------------- executed downloads
def _executed_downloads(app, exception) -> None:
    """Replace each notebook's download (_sources/<doc>.ipynb) by the executed notebook:
    the source merged with its outputs from the build's jupyter-cache (myst-nb's own copy
    in _build/jupyter_execute has no outputs when the notebook came from the cache)."""
    if exception is not None or app.builder.format != "html":
        return
    import nbformat
    from jupyter_cache import get_cache

    cache_path = getattr(app.config, "nb_execution_cache_path", "") or str(
        Path(app.outdir).parent / ".jupyter_cache")
    cache = get_cache(cache_path) if Path(cache_path).is_dir() else None
    sources = Path(app.outdir) / "_sources"
    copied = 0
    for docname in sorted(app.env.found_docs):
        source = app.env.doc2path(docname)
        target = sources / f"{docname}.ipynb"
        if not str(source).endswith(".ipynb") or not target.parent.is_dir() or cache is None:
            continue
        notebook = nbformat.read(source, as_version=4)
        try:
            _, merged = cache.merge_match_into_notebook(notebook)
        except KeyError:  # the source changed since it was read: myst-nb's copy, if executed
            executed = Path(app.outdir).parent / "jupyter_execute" / f"{docname}.ipynb"
            if not executed.is_file():
                continue
            merged = nbformat.read(executed, as_version=4)
            if not any(c.get("outputs") for c in merged.cells if c.cell_type == "code"):
                continue
        nbformat.write(merged, target)
        copied += 1
    logger.info(f"[blr_site] {copied} executed notebooks written to _sources/ (downloads)")


# ---------------------------------------------------------------- short references
def _resolve_short_reference(app, env, node, contnode):
    """Resolve `log_partition`, `step`, `FullGaussian`, ... written without their
    module or class: first along the class's MRO, then within the module, then anywhere
    in blrlib when the name is unique."""
    if node.get("refdomain") != "py":
        return None
    from sphinx.util.nodes import make_refnode

    target = node["reftarget"].lstrip("~.")
    if not re.fullmatch(r"[\w.]+", target):
        # napoleon reads "words: text" in an attribute's doc comment as a type named
        # "words"; that is prose, not a reference
        return contnode
    objects = env.get_domain("py").objects
    candidates = []
    module, cls = node.get("py:module"), node.get("py:class")
    if module and cls:
        try:
            klass = importlib.import_module(module)
            for part in cls.split("."):
                klass = getattr(klass, part)
            candidates += [f"{b.__module__}.{b.__qualname__}.{target}" for b in klass.__mro__]
        except (ImportError, AttributeError):
            pass
    if module:
        candidates.append(f"{module}.{target}")
        candidates += sorted(k for k in objects if k.startswith(module + ".") and k.endswith("." + target))
    anywhere = [k for k in objects if k.endswith("." + target) and k.startswith("blrlib.")]
    if len(anywhere) == 1:
        candidates += anywhere
    # a name a package re-exports: blrlib.families.Bernoulli is ...families.bernoulli.Bernoulli
    obj = _import_dotted(target) if target.startswith("blrlib.") else None
    if obj is not None and hasattr(obj, "__qualname__"):
        candidates.append(f"{obj.__module__}.{obj.__qualname__}")
    for full in candidates:
        if full in objects:
            entry = objects[full]
            return make_refnode(app.builder, node["refdoc"], entry.docname, entry.node_id, contnode, full)
    # a real attribute that has no entry of its own (inherited from a private base class,
    # such as _BinaryRule.step): shown as code, without a link
    if module and module.startswith("blrlib") and _has_attribute(module, cls, target):
        return contnode
    return None


def _import_dotted(path: str):
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        try:
            for part in parts[i:]:
                obj = getattr(obj, part)
        except AttributeError:
            return None
        return obj
    return None


def _has_attribute(module: str, cls: str | None, target: str) -> bool:
    mod = _import_dotted(module)
    if mod is None:
        return False
    scopes = [_import_dotted(f"{module}.{cls}")] if cls else []
    scopes += [v for v in vars(mod).values() if inspect.isclass(v) and v.__module__ == module]
    name = target.split(".")[-1]
    return any(scope is not None and hasattr(scope, name) for scope in scopes)


# ---------------------------------------------------------------- glued NumPy scalars
_NUMPY_SCALAR = re.compile(r"^np\.(?:float|int|uint|complex|bool)\w*\((.*)\)$", re.S)


def _patch_glue_numpy_scalars() -> None:
    from myst_nb.ext.glue import roles

    if getattr(roles.format_plain_text, "_blr_numpy", False):
        return
    original = roles.format_plain_text

    def format_plain_text(text, fmt_spec):
        match = _NUMPY_SCALAR.match(text.strip())
        return original(match.group(1) if match else text, fmt_spec)

    format_plain_text._blr_numpy = True
    roles.format_plain_text = format_plain_text


def setup(app):
    _patch_glue_numpy_scalars()
    # MathJax on every page, not only on pages whose Markdown has math: notebook outputs
    # (the live Table 1) carry formulas too
    app.set_html_assets_policy("always")
    app.connect("autodoc-process-docstring", _docstring_fallback, priority=900)
    app.connect("missing-reference", _resolve_short_reference)
    app.connect("config-inited", _offline_math)
    app.connect("source-read", _api_page)
    app.connect("build-finished", _executed_downloads)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
