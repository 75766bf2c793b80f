"""The course stands on its own: no citation of a document the reader does not have, no path outside the repository,
every relative link and chapter number pointing at something that exists, and no chapter using a later one's code."""
import json, re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NBS = sorted((ROOT / "nbs").glob("[0-9]*.ipynb"))
TEXT_FILES = [*NBS, *sorted((ROOT / "course").rglob("*.md")), *sorted((ROOT / "course").rglob("*.ipynb")),
              *sorted((ROOT / "nanochat_nb").glob("*.py")), ROOT / "README.md", *sorted((ROOT / "nbs").glob("[!0-9]*.ipynb"))]


def cells(path):
    return json.loads(path.read_text(encoding="utf-8"))["cells"] if path.suffix == ".ipynb" else None


def markdown_of(path):
    "The prose of a file: markdown cells of a notebook, the whole of a .md file."
    if path.suffix == ".ipynb": return "\n".join("".join(c["source"]) for c in cells(path) if c["cell_type"] == "markdown")
    return path.read_text(encoding="utf-8")


def all_text(path):
    if path.suffix == ".ipynb":
        return "\n".join("".join(c["source"]) for c in cells(path)) + "\n" + "\n".join(
            "".join(o.get("text", "")) for c in cells(path) if c["cell_type"] == "code" for o in c.get("outputs", []))
    return path.read_text(encoding="utf-8")


@pytest.mark.parametrize("path", TEXT_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_private_references(path):
    text = all_text(path)
    for bad in ("REFERENCE §", "REFERENCE:", "../shared", "shared/data"):
        assert bad not in text, f"{path.relative_to(ROOT)} mentions {bad!r}, which a reader who cloned the repository does not have"


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
ANCHOR = re.compile(r'<a id="([^"]+)"></a>')


@pytest.mark.parametrize("path", [p for p in TEXT_FILES if p.suffix in (".ipynb", ".md")], ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path):
    for target in LINK.findall(markdown_of(path)):
        if re.match(r"^(https?:|mailto:|javascript:|#)", target): continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve()
        assert dest.exists(), f"{path.relative_to(ROOT)} links to {target}, which does not exist"
        if anchor and dest.suffix == ".md":
            assert anchor in ANCHOR.findall(dest.read_text(encoding="utf-8")), f"{path.relative_to(ROOT)}: no anchor #{anchor} in {file}"


NUMBERS = {re.match(r"(\d\d[a-z]?)", p.name).group(1) for p in NBS}
CHAPTER = re.compile(r"\b[Cc]hapters? (\d\d[a-z]?)(?:\s*(?:–|-|and|to)\s*(\d\d[a-z]?))?")


@pytest.mark.parametrize("path", [p for p in TEXT_FILES if p.suffix in (".ipynb", ".md", ".py")], ids=lambda p: str(p.relative_to(ROOT)))
def test_chapter_numbers_exist(path):
    text = markdown_of(path) if path.suffix != ".py" else path.read_text(encoding="utf-8")
    for m in CHAPTER.finditer(text):
        for num in filter(None, m.groups()):
            assert num in NUMBERS, f"{path.relative_to(ROOT)} mentions chapter {num}, but no notebook nbs/{num}_*.ipynb exists"


def exported_module(path):
    for c in cells(path):
        if m := re.search(r"#\|\s*default_exp\s+(\S+)", "".join(c["source"])): return m.group(1)


IMPORT = re.compile(r"from\s+nanochat_nb\.(\w+)\s+import|import\s+nanochat_nb\.(\w+)|from\s+nanochat_nb\s+import\s+([\w, ()]+)")


def test_no_chapter_imports_a_later_one():
    order = {p.stem: i for i, p in enumerate(NBS)}
    owner = {exported_module(p): p.stem for p in NBS if exported_module(p)}
    found = set()
    for p in NBS:
        for c in cells(p):
            if c["cell_type"] != "code": continue
            for m in IMPORT.finditer("".join(c["source"])):
                mods = [m.group(1) or m.group(2)] if (m.group(1) or m.group(2)) else re.findall(r"\w+", m.group(3))
                for mod in mods:
                    if mod in owner and order[owner[mod]] > order[p.stem]: found.add((p.stem, mod))
    assert not found, f"chapters importing a later chapter's module: {sorted(found)}; reorder or move the code down"


def test_references_are_cited():
    refs = (ROOT / "course" / "references.md").read_text(encoding="utf-8")
    anchors = set(ANCHOR.findall(refs))
    assert len(anchors) >= 40 and all(re.search(rf'<a id="{a}"></a>\*\*', refs) for a in anchors)
    assert len(re.findall(r"arXiv:\d{4}\.\d{4,5}", refs)) >= 30


def test_chapters_and_their_exercises_link_to_each_other():
    "Every core chapter links to its exercise sheet, and that sheet links back to the chapter (both ways resolve)."
    from nanochat_nb.course_stats import chapter_time
    for nb in NBS:
        if chapter_time(nb).deep_dive: continue
        sheets = re.findall(r"\(\.\./course/exercises/([\w.]+\.md)\)", markdown_of(nb))
        assert sheets, f"{nb.name} links to no exercise sheet in course/exercises/"
        for sheet in sheets:
            text = (ROOT / "course" / "exercises" / sheet).read_text()
            assert f"(../../nbs/{nb.name})" in text, f"course/exercises/{sheet} does not link back to {nb.name}"


def test_syllabus_reading_times_are_the_measured_ones():
    "The syllabus's reading minutes (core rows, deep dives, the core total) agree with `bench course` to two minutes."
    from nanochat_nb.course_stats import chapter_time
    text = (ROOT / "course" / "syllabus.md").read_text()
    measured = {p.stem: chapter_time(p) for p in NBS}
    core_rows = dict(re.findall(r"^\| (\w+) \| [^|]+ \| [^|]+ \| (\d+) min \| about 1 h \|", text, re.M))
    groups = {}
    for stem, t in measured.items():
        if t.deep_dive: continue
        key = stem.split("_")[0]
        key = key if key in core_rows else key.rstrip("abcdefghijklmnopqrstuvwxyz")
        assert key in core_rows, f"core chapter {stem} has no row in the syllabus's core path"
        groups[key] = groups.get(key, 0) + t.minutes
    for key, stated in core_rows.items(): assert abs(int(stated) - groups.get(key, 0)) <= 2, (key, stated, groups.get(key))
    for stem, stated in re.findall(r"\]\(\.\./nbs/(\w+)\.ipynb\) \| (\d+) min \|", text):
        assert measured[stem].deep_dive and abs(int(stated) - measured[stem].minutes) <= 2, (stem, stated)
    h, m = map(int, re.search(r"The core path is \*\*(\d+) h (\d+) min\*\*", text).groups())
    assert abs(60 * h + m - sum(t.minutes for t in measured.values() if not t.deep_dive)) <= 2
