"""Tests that keep the book honest: table of contents, stored notebooks, chapter
structure, the first-cell install snippet, configuration and citations.

Running the notebooks themselves is nbval's job (`make test`); these checks are static
and take well under a second.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
BOOK = ROOT / "book"
TOC = ROOT / "_toc.yml"
CONFIG = ROOT / "_config.yml"
BIB = ROOT / "references.bib"

# Chapters on algorithms follow the chapter contract: these words, in this order,
# in level-2 headings. Their folders are read from _toc.yml (see algorithm_chapter_dirs):
# every numbered part except these concept parts, so a new part cannot escape the contract.
CONCEPT_PARTS = ("Foundations",)
CHAPTER_SECTIONS = ("The algorithm", "Ingredients", "Derivation", "Verification", "Experiment", "Exercises")


# ---------------------------------------------------------------- helpers
def _skip(path: Path) -> bool:
    return any(part in {".ipynb_checkpoints", "_build"} for part in path.parts)


def book_notebooks() -> list[Path]:
    return sorted(p for p in BOOK.rglob("*.ipynb") if not _skip(p))


def book_markdown() -> list[Path]:
    return sorted(p for p in BOOK.rglob("*.md") if not _skip(p))


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def load_nb(path: Path) -> dict:
    with path.open(encoding="utf-8") as f:
        return json.load(f)


def cell_source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def toc_entries(toc: dict) -> list[str]:
    """Every `file` in a jb-book table of contents, root first."""
    files = [toc["root"]]

    def walk(node):
        if isinstance(node, dict):
            if "file" in node:
                files.append(node["file"])
            for key in ("parts", "chapters", "sections"):
                for child in node.get(key, []) or []:
                    walk(child)
        elif isinstance(node, list):
            for child in node:
                walk(child)

    walk(toc)
    return files


def resolve_entry(entry: str) -> Path | None:
    """The file a toc entry names (.ipynb or .md, or an explicit extension), or None."""
    path = ROOT / entry
    if path.suffix in {".ipynb", ".md"} and path.is_file():
        return path
    for suffix in (".ipynb", ".md"):
        candidate = path.with_name(path.name + suffix)
        if candidate.is_file():
            return candidate
    return None


def markdown_texts() -> list[tuple[str, str]]:
    """(where, text) for every markdown page and every markdown cell in book/."""
    texts = [(rel(p), p.read_text(encoding="utf-8")) for p in book_markdown()]
    for nb_path in book_notebooks():
        for i, cell in enumerate(load_nb(nb_path)["cells"]):
            if cell["cell_type"] == "markdown":
                texts.append((f"{rel(nb_path)} cell {i}", cell_source(cell)))
    return texts


def level2_headings(text: str) -> list[str]:
    """`## ...` headings outside fenced blocks (``` or :::)."""
    headings, fence = [], None
    for line in text.splitlines():
        stripped = line.strip()
        m = re.match(r"^(`{3,}|:{3,})", stripped)
        if m:
            marker = m.group(1)
            if fence is None:
                fence = marker
            elif marker[0] == fence[0] and len(marker) >= len(fence) and stripped == marker:
                fence = None
            continue
        if fence is None and re.match(r"^##\s+\S", line):
            headings.append(line[2:].strip())
    return headings


@pytest.fixture(scope="module")
def toc() -> dict:
    with TOC.open(encoding="utf-8") as f:
        return yaml.safe_load(f)


@pytest.fixture(scope="module")
def config() -> dict:
    with CONFIG.open(encoding="utf-8") as f:
        return yaml.safe_load(f)


# ---------------------------------------------------------------- (a) table of contents
def test_toc_format(toc):
    assert toc["format"] == "jb-book"
    assert toc["root"] == "book/intro"


def test_every_toc_entry_exists(toc):
    missing = [e for e in toc_entries(toc) if resolve_entry(e) is None]
    assert not missing, f"_toc.yml lists files that do not exist (as .ipynb or .md): {missing}"


def test_toc_entries_unique(toc):
    entries = toc_entries(toc)
    dupes = sorted({e for e in entries if entries.count(e) > 1})
    assert not dupes, f"_toc.yml lists these more than once: {dupes}"


def test_every_book_page_is_in_toc(toc):
    # only_build_toc_files: a page missing from the toc is silently left out of the book.
    listed = {resolve_entry(e) for e in toc_entries(toc)}
    pages = book_notebooks() + [p for p in book_markdown() if not p.name.startswith("_")]
    orphans = [rel(p) for p in pages if p not in listed]
    assert not orphans, f"pages in book/ missing from _toc.yml: {orphans}"


def test_references_page_is_last(toc):
    assert toc_entries(toc)[-1] == "book/references"


# ---------------------------------------------------------------- (b) stored without outputs
@pytest.mark.parametrize("nb_path", book_notebooks(), ids=rel)
def test_notebook_stored_without_outputs(nb_path):
    nb = load_nb(nb_path)
    assert nb.get("nbformat") == 4
    dirty = [
        i
        for i, cell in enumerate(nb["cells"])
        if cell["cell_type"] == "code" and (cell.get("outputs") or cell.get("execution_count") is not None)
    ]
    assert not dirty, f"{rel(nb_path)}: code cells {dirty} carry outputs or execution counts (run `make strip`)"
    assert "widgets" not in nb.get("metadata", {}), f"{rel(nb_path)}: widget state stored (run `make strip`)"


# ---------------------------------------------------------------- (c) chapter contract
def algorithm_chapter_dirs(toc: dict) -> tuple[str, ...]:
    """The book/ folders of the chapters in every numbered part of the toc except CONCEPT_PARTS
    (unnumbered parts are front and back matter)."""
    dirs: list[str] = []
    for part in toc.get("parts", []) or []:
        if not part.get("numbered") or part.get("caption") in CONCEPT_PARTS:
            continue
        for entry in toc_entries({"root": "", "chapters": part.get("chapters", [])})[1:]:
            parts = Path(entry).parts
            if len(parts) >= 3 and parts[0] == "book" and parts[1] not in dirs:
                dirs.append(parts[1])
    return tuple(dirs)


def _load_toc() -> dict:
    with TOC.open(encoding="utf-8") as f:
        return yaml.safe_load(f)


CHAPTER_DIRS = algorithm_chapter_dirs(_load_toc())


def test_algorithm_chapter_dirs_come_from_the_toc():
    assert {"optimization", "deep_learning"} <= set(CHAPTER_DIRS)
    toy = {
        "parts": [
            {"caption": "Foundations", "numbered": True, "chapters": [{"file": "book/foundations/a"}]},
            {"caption": "Bayesian inference", "numbered": True, "chapters": [{"file": "book/inference/k"}]},
            {"caption": "New part", "numbered": True, "chapters": [{"file": "book/new/x", "sections": [{"file": "book/new2/y"}]}]},
            {"caption": "Back matter", "chapters": [{"file": "book/references"}]},
        ]
    }
    assert algorithm_chapter_dirs(toy) == ("inference", "new", "new2")


def chapter_notebooks() -> list[Path]:
    return [p for p in book_notebooks() if p.relative_to(BOOK).parts[0] in CHAPTER_DIRS]


def missing_sections(headings: list[str]) -> list[str]:
    """The required sections not found, in order, among the headings."""
    missing, pos = [], 0
    for section in CHAPTER_SECTIONS:
        for j in range(pos, len(headings)):
            if section.lower() in headings[j].lower():
                pos = j + 1
                break
        else:
            missing.append(section)
    return missing


def test_missing_sections_detects_order():
    ok = ["The algorithm", "Ingredients", "A derivation", "Verification", "Experiment: x", "Exercises"]
    assert missing_sections(ok) == []
    assert missing_sections(ok[1:]) == ["The algorithm"]
    swapped = ["The algorithm", "Derivation", "Ingredients", "Verification", "Experiment", "Exercises"]
    assert missing_sections(swapped) == ["Derivation"]


@pytest.mark.parametrize("nb_path", chapter_notebooks(), ids=rel)
def test_chapter_has_the_six_sections_in_order(nb_path):
    headings = [
        h for cell in load_nb(nb_path)["cells"] if cell["cell_type"] == "markdown" for h in level2_headings(cell_source(cell))
    ]
    missing = missing_sections(headings)
    assert not missing, (
        f"{rel(nb_path)}: level-2 headings must contain, in order, {list(CHAPTER_SECTIONS)}; "
        f"not found in order: {missing}; headings: {headings}"
    )


# ---------------------------------------------------------------- (d) first code cell
def _python_of(source: str) -> str:
    """Cell source with IPython magics and shell escapes replaced by `pass`."""
    lines = []
    for line in source.splitlines():
        stripped = line.lstrip()
        if stripped.startswith(("%", "!")):
            line = line[: len(line) - len(stripped)] + "pass"
        lines.append(line)
    return "\n".join(lines)


def installs_blrlib_if_missing(source: str) -> bool:
    """True when the code has `try: import blrlib ... except ImportError: ...` at top level."""
    try:
        tree = ast.parse(_python_of(source))
    except SyntaxError:
        return False
    for node in tree.body:
        if not isinstance(node, ast.Try):
            continue
        imports = any(
            isinstance(stmt, ast.Import) and any(a.name.split(".")[0] == "blrlib" for a in stmt.names)
            or isinstance(stmt, ast.ImportFrom) and (stmt.module or "").split(".")[0] == "blrlib"
            for stmt in node.body
        )
        catches = False
        for handler in node.handlers:
            names = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
            if any(isinstance(n, ast.Name) and n.id in {"ImportError", "ModuleNotFoundError"} for n in names):
                catches = bool(handler.body)
        if imports and catches:
            return True
    return False


def test_install_snippet_detector():
    good = "try:\n    import blrlib\nexcept ImportError:\n    %pip install -q blrlib\n    import blrlib\n"
    assert installs_blrlib_if_missing(good)
    assert not installs_blrlib_if_missing("import blrlib\n")
    assert not installs_blrlib_if_missing("try:\n    import torch\nexcept ImportError:\n    pass\n")
    assert not installs_blrlib_if_missing("try:\n    import blrlib\nexcept ValueError:\n    pass\n")


@pytest.mark.parametrize("nb_path", book_notebooks(), ids=rel)
def test_first_code_cell_installs_blrlib_if_missing(nb_path):
    code = [c for c in load_nb(nb_path)["cells"] if c["cell_type"] == "code"]
    if not code:
        pytest.skip("no code cells")
    assert installs_blrlib_if_missing(cell_source(code[0])), (
        f"{rel(nb_path)}: the first code cell must be `try: import blrlib` / `except ImportError:` "
        "(install blrlib, then import it), so the notebook runs in Colab and Binder"
    )


# ---------------------------------------------------------------- (e) configuration
def test_config_excludes_non_book_paths(config):
    patterns = config.get("exclude_patterns", [])
    for must in (".venv", "_build"):
        assert any(p == must or p.startswith(must + "/") for p in patterns), f"_config.yml must exclude {must}"
    assert config.get("only_build_toc_files") is True


def test_config_execution(config):
    execute = config["execute"]
    assert execute["execute_notebooks"] in {"cache", "force"}
    assert execute["allow_errors"] is False
    assert execute["stderr_output"] in {"warn", "error", "severe"}
    assert 0 < execute["timeout"] <= 600


def test_config_bibliography_is_references_bib(config):
    assert config["bibtex_bibfiles"] == ["references.bib"]
    assert BIB.is_file()


def test_config_macros_well_formed(config):
    macros = config["sphinx"]["config"]["mathjax3_config"]["tex"]["macros"]
    required = {
        "lam", "muv", "Fisher", "E", "KL", "ent", "lbar", "Normal", "thetav", "mv", "Sv", "T",
        "grad", "R", "diag", "tr", "argmin", "ngrad",
    }  # fmt: skip
    assert required <= set(macros), f"macros missing from _config.yml: {sorted(required - set(macros))}"
    for name, body in macros.items():
        text, nargs = (body[0], body[1]) if isinstance(body, list) else (body, 0)
        assert isinstance(text, str) and text.startswith("\\"), name
        assert text.count("{") == text.count("}"), f"unbalanced braces in macro \\{name}"
        used = {int(n) for n in re.findall(r"#(\d)", text)}
        assert used == set(range(1, nargs + 1)), f"macro \\{name}: arguments {sorted(used)} vs declared {nargs}"


# ---------------------------------------------------------------- (f) citations
# A role, not the role's name quoted in inline code (`{cite:t}`).
CITE_ROLE = re.compile(r"(?<!`)\{cite(?::[a-z]+)?\}`([^`]*)`")


def bib_keys() -> list[str]:
    return re.findall(r"^\s*@\w+\s*\{\s*([^,\s]+)\s*,", BIB.read_text(encoding="utf-8"), flags=re.M)


def test_bib_keys_unique():
    keys = bib_keys()
    assert keys, "references.bib has no entries"
    dupes = sorted({k for k in keys if keys.count(k) > 1})
    assert not dupes, f"duplicate keys in references.bib: {dupes}"


def test_cite_regex():
    found = CITE_ROLE.findall("see {cite:t}`a2020, b2021` and {cite:p}`c` and {cite}`d`")
    assert found == ["a2020, b2021", "c", "d"]
    assert CITE_ROLE.findall("write `{cite:t}` or `{cite:p}` with a key") == []


def test_every_cited_key_is_in_bib():
    keys = set(bib_keys())
    unknown = []
    for where, text in markdown_texts():
        for group in CITE_ROLE.findall(text):
            unknown += [f"{where}: {k.strip()}" for k in group.split(",") if k.strip() and k.strip() not in keys]
    assert not unknown, f"citation keys not in references.bib: {unknown}"


def test_exactly_one_bibliography_directive():
    # Two {bibliography} directives give duplicate-citation warnings (so -W fails).
    where = [w for w, text in markdown_texts() if re.search(r"^\s*(```|:::)\{bibliography\}", text, flags=re.M)]
    assert where == ["book/references.md"], f"{{bibliography}} must appear once, in book/references.md: {where}"


# ---------------------------------------------------------------- (g) numbers in prose come from the run
# Every number an experiment or an exercise solution produces reaches the prose through
# myst-nb's glue ({glue:text}`key:.3f`), never typed by hand, so the text cannot go stale.
# In the markdown of Experiment sections and of exercise solutions, a decimal number with
# two or more significant digits outside code and outside a role is flagged unless it is
# a constant of the setup or a value worked out by hand. Those are listed, explicitly, in
# a MyST comment line (not rendered) in the same markdown cell:
#     % not from a run: 0.25 0.058
# or, for a few constants used across the book, in GLUE_ALLOWED.
GLUE_ALLOWED = frozenset({"1.96"})  # the 95 % normal quantile
GLUE_EXEMPT_LINE = re.compile(r"^\s*%\s*not from a run:(.*)$", re.I)
# Chapters whose prose numbers are still being glued; remove a chapter once it passes.
GLUE_CHECK_PENDING: frozenset[str] = frozenset()
DECIMAL = re.compile(r"(?<![\w.\-^_{])-?(\d*\.\d+)(?:[eE][+-]?\d+)?(?![\w.]*\d)")
SOLUTION_OPEN = re.compile(r"^(`{3,}|:{3,})\{solution\}")
GATED_OPEN = re.compile(r"^(`{3,}|:{3,})\{solution-start\}")
GATED_CLOSE = re.compile(r"^(`{3,}|:{3,})\{solution-end\}")
ROLE_OR_CODE = re.compile(r"(\{[\w:.-]+\})?`[^`]*`")


def significant_digits(number: str) -> int:
    """Significant digits of a decimal numeral: '0.050' has 2, '12.5' has 3."""
    return len(number.replace(".", "").lstrip("0"))


def prose_to_check(cells: list[dict]) -> list[tuple[int, str, set[str]]]:
    """(cell index, line, the cell's not-from-a-run numbers) for the lines of markdown that
    lie in a level-2 Experiment section or inside an exercise solution, without code."""
    out, section_is_experiment, gated = [], False, False
    for i, cell in enumerate(cells):
        if cell["cell_type"] != "markdown":
            continue
        lines = cell_source(cell).splitlines()
        exempt = {n for line in lines if (m := GLUE_EXEMPT_LINE.match(line)) for n in DECIMAL.findall(m.group(1))}
        fences: list[tuple[str, bool]] = []  # (marker, is a solution)
        previous_blank_or_code = True
        for line in lines:
            stripped = line.strip()
            fence = re.match(r"^(`{3,}|:{3,})(.*)$", stripped)
            if fence:
                marker, rest = fence.groups()
                if fences and marker[0] == fences[-1][0][0] and len(marker) >= len(fences[-1][0]) and not rest:
                    fences.pop()
                else:
                    gated = gated or bool(GATED_OPEN.match(stripped))
                    gated = gated and not GATED_CLOSE.match(stripped)
                    is_code = not rest.startswith("{")  # ```python ... ``` is code
                    fences.append((marker, "code" if is_code else bool(SOLUTION_OPEN.match(stripped))))
                previous_blank_or_code = False
                continue
            if not fences and re.match(r"^##\s+\S", line):
                section_is_experiment = "experiment" in line.lower()
            in_code = any(kind == "code" for _, kind in fences)
            indented_code = line.startswith("    ") and previous_blank_or_code
            previous_blank_or_code = not stripped or indented_code
            in_solution = gated or any(kind is True for _, kind in fences)
            if in_code or indented_code or stripped.startswith(("%", ":")) or not stripped:
                continue
            if section_is_experiment or in_solution:
                out.append((i, line, exempt))
    return out


def unglued_numbers(cells: list[dict]) -> list[str]:
    found = []
    for i, line, exempt in prose_to_check(cells):
        text = ROLE_OR_CODE.sub(" ", line)
        text = re.sub(r"\]\([^)]*\)", "]", text)  # link targets
        for number in DECIMAL.findall(text):
            if significant_digits(number) >= 2 and number not in exempt and number not in GLUE_ALLOWED:
                found.append(f"cell {i}: {number} in {line.strip()[:100]!r}")
    return found


def _md(text: str) -> dict:
    return {"cell_type": "markdown", "source": text}


def test_unglued_numbers_detector():
    experiment = "## Experiment\n\nThe loss fell to 0.031 and then to {glue:text}`gap:.3f`."
    assert unglued_numbers([_md(experiment)]) == ["cell 0: 0.031 in " + repr(experiment.splitlines()[2])]
    assert unglued_numbers([_md("## Derivation\n\nThe loss fell to 0.031.")]) == []
    assert unglued_numbers([_md("## Experiment\n\nWith $\\rho = 0.2$ and $K = 8$ samples.")]) == []
    assert unglued_numbers([_md("## Experiment\n% not from a run: 0.25\nWith $\\sigma^2 = 0.25$.")]) == []
    assert unglued_numbers([_md("## Experiment\n\n```python\nx = 0.125\n```\n\n    y = 0.375\n")]) == []
    solution = "## Exercises\n\n```{solution} ex\n:class: dropdown\n\nIt is 0.058.\n```\n"
    assert len(unglued_numbers([_md(solution)])) == 1
    gated = "```{solution-start} ex\n```\nIt is 0.058.\n```{solution-end}\n```\nOutside 0.058."
    assert len(unglued_numbers([_md("## Exercises\n"), _md(gated)])) == 1
    assert significant_digits("0.050") == 2 and significant_digits("0.05") == 1
    assert significant_digits("12.5") == 3


def glue_checked_notebooks() -> list[Path]:
    return [p for p in book_notebooks() if rel(p) not in GLUE_CHECK_PENDING]


def test_glue_check_pending_lists_existing_chapters():
    assert GLUE_CHECK_PENDING <= {rel(p) for p in book_notebooks()}


@pytest.mark.parametrize("nb_path", glue_checked_notebooks(), ids=rel)
def test_numbers_in_experiments_and_solutions_are_glued(nb_path):
    found = unglued_numbers(load_nb(nb_path)["cells"])
    assert not found, (
        f"{rel(nb_path)}: numbers typed into Experiment or solution prose; glue them from the run "
        f"({{glue:text}}`key:.3f`) or, for a setup constant, list it in a '% not from a run:' "
        f"comment line of the cell: {found}"
    )


# ---------------------------------------------------------------- code line length
# The code box of the built page shows 88 characters (14 px monospace in the 1,400 px
# text column); a longer line scrolls sideways. Every code cell of every notebook
# (hidden or not) keeps its lines within that. Chapters still being wrapped are listed
# here; their owners remove them once they pass.
MAX_CODE_LINE = 88
LINE_LENGTH_PENDING: frozenset[str] = frozenset()


def long_code_lines(cells: list[dict], limit: int = MAX_CODE_LINE) -> list[str]:
    """'cell i line j (n chars)' for every code line longer than ``limit`` (the install
    cell, the same in every chapter, is exempt)."""
    return [
        f"cell {i} line {j} ({len(line)} chars)"
        for i, cell in enumerate(cells)
        if cell["cell_type"] == "code" and not installs_blrlib_if_missing(cell_source(cell))
        for j, line in enumerate(cell_source(cell).splitlines(), 1)
        if len(line) > limit
    ]


def test_long_code_lines_detector():
    code = {"cell_type": "code", "source": ["x = 1\n", "y = " + "1 + " * 30 + "1\n"]}
    assert long_code_lines([_md("z" * 200), code]) == ["cell 1 line 2 (125 chars)"]
    assert long_code_lines([code], limit=200) == []


def test_line_length_pending_lists_existing_chapters():
    assert LINE_LENGTH_PENDING <= {rel(p) for p in book_notebooks()}


@pytest.mark.parametrize("nb_path", [p for p in book_notebooks() if rel(p) not in LINE_LENGTH_PENDING],
                         ids=rel)
def test_code_lines_fit_the_code_box(nb_path):
    found = long_code_lines(load_nb(nb_path)["cells"])
    assert not found, f"{rel(nb_path)}: code lines longer than {MAX_CODE_LINE} characters: {found}"


# ---------------------------------------------------------------- Binder environment
def _req_name(req: str) -> str:
    return re.split(r"[<>=!~\[ ;@]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_binder_environment_matches_pyproject():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    wanted = {_req_name(r) for r in project["dependencies"] + project["optional-dependencies"]["book"]}
    with (ROOT / "environment.yml").open(encoding="utf-8") as f:
        env = yaml.safe_load(f)
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    have = {_req_name(r) for r in pip if not r.startswith("-")}
    assert not wanted - have, f"environment.yml lacks these pyproject.toml dependencies: {sorted(wanted - have)}"
