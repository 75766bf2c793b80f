"""Build the course's website without Quarto: every chapter as a page with the outputs it was saved with.

nbdev's convention is a site made from the notebooks by `nbdev_docs`, which renders them with Quarto. Quarto is not
on the package index in a form that installs offline (the `quarto-cli` package downloads its binary from GitHub at
install time), so this script takes nbdev's own first half, the notebook processing of `nbdev_proc_nbs`
(front matter, `show_doc` tables, hidden cells dropped), and renders the processed notebooks with nbconvert instead, adding the sidebar of `nbs/sidebar.yml`
(the core path, then the deep dives), previous/next links, and the course's Markdown pages (syllabus, exercises,
references) so that every link between them works. Links to other files of the repository go to the repository's
web page (`git_url` in settings.ini). Figures are the notebooks' PNG outputs, embedded in the pages; the stylesheet
nbconvert would repeat in every page is one file under assets/. Where Quarto is installed, `nbdev_docs` builds the
Quarto version of the same site from the same files.

    python tools/build_site.py                # nbdev's processing, then the pages, into _docs/
    python tools/build_site.py --out /tmp/s   # somewhere else
    python tools/build_site.py --no-proc      # reuse _proc/ from an earlier run

Then open `_docs/index.html` in a browser. Nothing is executed: the pages show the outputs stored in the notebooks.
"""
from __future__ import annotations
import argparse, configparser, copy, html, json, os, posixpath, re, shutil, subprocess, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DIRECTIVE = re.compile(r"^\s*#\|\s*([\w-]+)\s*:?\s*(.*)$")
HREF = re.compile(r'(href|src)="([^"]*)"')

CSS = """
body { margin: 0; }
.site-nav { position: fixed; top: 0; left: 0; bottom: 0; width: 290px; overflow-y: auto; padding: 14px 14px 40px;
  box-sizing: border-box; background: #f7f7f9; border-right: 1px solid #ddd; font: 14px/1.45 system-ui, sans-serif; }
.site-nav a { color: #1a4f8b; text-decoration: none; display: block; padding: 2px 4px; border-radius: 4px; }
.site-nav a:hover { background: #e6eef8; }
.site-nav a.current { background: #dbe7f6; font-weight: 600; }
.site-nav .site-title { font-size: 17px; font-weight: 700; margin-bottom: 10px; }
.site-nav .section { margin: 14px 0 4px; font-weight: 700; color: #555; text-transform: uppercase; font-size: 12px; }
.site-page { margin-left: 290px; padding: 10px 28px 60px; max-width: 1100px; }
.site-pager { display: flex; justify-content: space-between; margin: 40px 0 0; padding-top: 12px; border-top: 1px solid #ddd;
  font: 15px system-ui, sans-serif; }
.site-menu { display: none; }
@media (max-width: 800px) {
  .site-nav { display: none; }
  .site-page { margin-left: 0; padding: 8px 12px 40px; }
  .site-menu { display: block; font: 15px system-ui, sans-serif; padding: 8px 0; }
}
.md-page { font: 16px/1.55 system-ui, sans-serif; }
.md-page pre { background: #f6f8fa; padding: 10px; overflow-x: auto; }
.md-page table { border-collapse: collapse; } .md-page td, .md-page th { border: 1px solid #ccc; padding: 3px 8px; }
"""


def settings() -> configparser.SectionProxy:
    cp = configparser.ConfigParser(interpolation=None)
    cp.read(ROOT / "settings.ini")
    return cp["DEFAULT"]


def sidebar(nbs: Path) -> list[tuple[str, list[str]]]:
    "[(section title or '', [notebook file names])] from nbs/sidebar.yml, checked against the notebooks that exist."
    import yaml
    spec = yaml.safe_load((nbs / "sidebar.yml").read_text())["website"]["sidebar"]["contents"]
    out, seen = [], set()
    for item in spec:
        title, files = (item["section"], item["contents"]) if isinstance(item, dict) else ("", [item])
        out.append((title, files)); seen.update(files)
    missing = sorted(p.name for p in nbs.glob("*.ipynb") if p.name not in seen)
    absent = sorted(f for f in seen if not (nbs / f).is_file())
    if missing or absent:
        raise SystemExit(f"nbs/sidebar.yml is out of date: add {missing or 'nothing'}, remove {absent or 'nothing'}")
    return out


def site_path(repo_path: str, git_url: str) -> str | None:
    "Where a repository file lives on the site (None: not a page of the site, link to the repository instead)."
    p = posixpath.normpath(repo_path)
    if p in ("README.md", "nbs", "nbs/index.ipynb"): return "index.html"
    if p.startswith("nbs/") and p.endswith(".ipynb") and "/" not in p[4:]: return p[4:-6] + ".html"
    if p.startswith("course/") and p.endswith(".md"): return p[:-3] + ".html"
    if p.startswith("course/solutions/") and p.endswith(".ipynb"): return p[:-6] + ".html"
    if p in ("course", "course/exercises", "course/solutions"): return "course/README.html"
    return None


def rewrite_links(page_html: str, page_repo: str, page_site: str, git_url: str, pages: set[str]) -> str:
    "Point every relative link of a page (written for its place in the repository) at the site's page or the repository."
    def fix(m):
        attr, url = m.groups()
        if re.match(r"^(https?:|mailto:|#|data:|javascript:)", url) or not url: return m.group(0)
        path, _, frag = url.partition("#")
        target = posixpath.normpath(posixpath.join(posixpath.dirname(page_repo), path))
        site = site_path(target, git_url)
        if site is None or site not in pages:
            if attr == "src": return m.group(0)
            new = f"{git_url}/blob/main/{target}" + (f"#{frag}" if frag else "")
        else:
            new = posixpath.relpath(site, posixpath.dirname(page_site) or ".") + (f"#{frag}" if frag else "")
        return f'{attr}="{html.escape(new, quote=True)}"'
    return HREF.sub(fix, page_html)


def nav_html(sections, current: str, depth: int, titles: dict) -> str:
    up = "../" * depth
    parts = [f'<nav class="site-nav"><div class="site-title"><a href="{up}index.html">nanochat_nb</a></div>']
    for title, files in sections:
        if title: parts.append(f'<div class="section">{html.escape(title)}</div>')
        for f in files:
            page = f[:-6] + ".html"
            cls = ' class="current"' if page == current else ""
            label = "Start here" if f == "index.ipynb" else titles.get(f, f).replace("`", "")
            parts.append(f'<a{cls} href="{up}{page}">{html.escape(label)}</a>')
    parts.append(f'<div class="section">Course</div><a href="{up}course/syllabus.html">Syllabus</a>'
                 f'<a href="{up}course/README.html">Exercises</a><a href="{up}course/references.html">References</a></nav>')
    return "".join(parts)


def decorate(doc: str, nav: str, pager: str, depth: int) -> str:
    "Put the sidebar, the narrow-screen menu and the pager around the body of a rendered page."
    menu = f'<div class="site-menu"><a href="{"../" * depth}index.html">☰ all chapters</a></div>'
    doc = doc.replace("</head>", f"<style>{CSS}</style>\n</head>", 1)
    m = re.search(r"<body[^>]*>", doc)
    doc = doc[:m.end()] + nav + '<div class="site-page">' + menu + doc[m.end():]
    i = doc.rindex("</body>")
    return doc[:i] + pager + "</div>" + doc[i:]


def front_matter(nb) -> dict:
    import yaml
    if nb.cells and nb.cells[0].cell_type == "raw" and nb.cells[0].source.startswith("---"):
        fm = yaml.safe_load(nb.cells[0].source.strip().strip("-")) or {}
        nb.cells.pop(0)
        return fm
    return {}


def prepare(nb, fm: dict):
    "Drop what a page should not show (the export banner, hidden cells, cell directives), and put the title back."
    cells = []
    for c in nb.cells:
        if c.cell_type == "markdown" and "WARNING: THIS FILE WAS AUTOGENERATED" in c.source: continue
        if c.cell_type == "code":
            lines, dirs = c.source.splitlines(), {}
            while lines and DIRECTIVE.match(lines[0]):
                k, v = DIRECTIVE.match(lines.pop(0)).groups(); dirs[k] = v.strip().lower()
            if dirs.get("include") == "false" or "hide" in dirs: continue
            c.source = "\n".join(lines)
            tags = set(c.metadata.get("tags", []))
            if dirs.get("echo") == "false" or not c.source.strip(): tags.add("remove_input")
            if dirs.get("output") == "false": c.outputs = []
            c.metadata["tags"] = sorted(tags)
        cells.append(c)
    if fm.get("title"):
        import nbformat
        lead = f"# {fm['title']}" + (f"\n\n> {fm['description']}" if fm.get("description") else "")
        cells.insert(0, nbformat.v4.new_markdown_cell(lead))
    nb.cells = cells
    return nb


class _Unparsed:
    "Stands in for BeautifulSoup in HTMLExporter's last pass, which re-parses each page only to add alt text and tabindex."
    def __init__(self, markup, features=None): self.markup = markup
    def select(self, selector): return []
    def __str__(self): return self.markup


def exporter():
    """nbconvert's HTML exporter (lab template) made about five times faster for these trusted notebooks: no bleach pass over
    code that pygments has already escaped, and no BeautifulSoup re-parse of the finished page (alt text comes from `alt_text`)."""
    import nbconvert.exporters.html as nbhtml
    from traitlets.config import Config
    c = Config()
    c.TagRemovePreprocessor.enabled = True
    c.TagRemovePreprocessor.remove_input_tags = {"remove_input"}
    c.HTMLExporter.exclude_input_prompt = True
    c.HTMLExporter.exclude_output_prompt = True

    class Exporter(nbhtml.HTMLExporter):
        def from_notebook_node(self, nb, resources=None, **kw):
            saved, nbhtml.BeautifulSoup = getattr(nbhtml, "BeautifulSoup", None), _Unparsed
            try: return super().from_notebook_node(nb, resources, **kw)
            finally: nbhtml.BeautifulSoup = saved
    exp = Exporter(config=c, template_name="lab")
    exp.register_filter("clean_html", lambda text: text)
    return exp


def alt_text(doc: str, title: str) -> str:
    "Give every image without one an alt text naming its page (the figures are the notebooks' PNG outputs)."
    return re.sub(r"<img (?![^>]*\balt=)", f'<img alt="{html.escape("a figure of " + title, quote=True)}" ', doc)


def shared_styles(doc: str, depth: int, assets: dict) -> str:
    "Move each large inline stylesheet (nbconvert puts the same ~270 KB in every page) to one file under assets/."
    def out(m):
        css = m.group(1)
        if len(css) < 2000: return m.group(0)
        name = assets.setdefault(css, f"assets/style-{len(assets)}.css")
        return f'<link rel="stylesheet" href="{"../" * depth}{name}">'
    return re.sub(r'<style type="text/css">(.*?)</style>', out, doc, flags=re.S)


def markdown_page(md_text: str, title: str) -> str:
    import mistune
    body = mistune.create_markdown(plugins=["table", "strikethrough", "url"], escape=False)(md_text)
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{html.escape(title)}</title></head><body><div class='md-page'>{body}</div></body></html>")


def build(out: Path, proc: bool = True) -> dict:
    import nbformat
    t0 = time.time()
    cfg, nbs = settings(), ROOT / "nbs"
    git_url = cfg.get("git_url", "").rstrip("/")
    sections = sidebar(nbs)
    if proc:   # nbdev_proc_nbs without its first step, which tries to download and install Quarto with sudo
        code = "from nbdev.serve import proc_nbs; proc_nbs(n_workers=2)"
        r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
        if r.returncode: raise SystemExit(f"nbdev's notebook processing (proc_nbs) failed:\n{r.stderr[-3000:]}")
    t_proc = time.time() - t0
    procd = ROOT / "_proc"
    if not procd.is_dir(): raise SystemExit(f"{procd} is missing: run without --no-proc, which processes the notebooks first")
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True); tmp.mkdir(parents=True)
    # every page first (name -> (repo path, html)), links fixed once all the pages are known
    order = [f for _, files in sections for f in files]
    notebooks, titles = {}, {}
    for f in order:
        nb = nbformat.read(procd / f, as_version=4)
        fm = front_matter(nb)
        titles[f] = fm.get("title", f[:-6])
        notebooks[f] = prepare(nb, fm)
    exp = exporter()
    mds = sorted((ROOT / "course").rglob("*.md")); sols = sorted((ROOT / "course" / "solutions").glob("*.ipynb"))
    names = ({f[:-6] + ".html" for f in order} | {m.relative_to(ROOT).as_posix()[:-3] + ".html" for m in mds}
             | {s_.relative_to(ROOT).as_posix()[:-6] + ".html" for s_ in sols})
    pages = {}   # site path -> finished html; a page's own links are fixed before the site's navigation is added
    for i, f in enumerate(order):
        page = f[:-6] + ".html"
        body = rewrite_links(alt_text(exp.from_notebook_node(notebooks[f])[0], titles[f]), "nbs/" + f, page, git_url, names)
        prev_ = f'<a href="{order[i - 1][:-6]}.html">← {html.escape(titles[order[i - 1]])}</a>' if i else "<span></span>"
        next_ = f'<a href="{order[i + 1][:-6]}.html">{html.escape(titles[order[i + 1]])} →</a>' if i + 1 < len(order) else "<span></span>"
        pages[page] = decorate(body, nav_html(sections, page, 0, titles), f'<div class="site-pager">{prev_}{next_}</div>', 0)
    for md in mds:
        rel = md.relative_to(ROOT).as_posix()
        page, depth = rel[:-3] + ".html", rel.count("/")
        title = next((l.lstrip("# ").strip() for l in md.read_text().splitlines() if l.startswith("#")), md.stem)
        body = rewrite_links(markdown_page(md.read_text(), title), rel, page, git_url, names)
        pages[page] = decorate(body, nav_html(sections, "", depth, titles), "", depth)
    for sol in sols:
        rel = sol.relative_to(ROOT).as_posix()
        body = alt_text(exp.from_notebook_node(prepare(nbformat.read(sol, as_version=4), {}))[0], sol.stem)
        body = rewrite_links(body, rel, rel[:-6] + ".html", git_url, names)
        pages[rel[:-6] + ".html"] = decorate(body, nav_html(sections, "", 2, titles), "", 2)
    assets = {}   # stylesheet -> its file
    for page, doc in pages.items():
        dest = tmp / page
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(shared_styles(doc, page.count("/"), assets), encoding="utf-8")
    for css, name in assets.items():
        (tmp / name).parent.mkdir(exist_ok=True)
        (tmp / name).write_text(css, encoding="utf-8")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return dict(pages=len(pages), chapters=len(order), bytes=size, seconds=time.time() - t0, proc_seconds=t_proc, out=str(out))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python tools/build_site.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "_docs"), help="where the site goes (default: _docs, nbdev's doc_path)")
    ap.add_argument("--no-proc", action="store_true", help="reuse _proc/ instead of processing the notebooks again")
    a = ap.parse_args(argv)
    r = build(Path(a.out).resolve(), proc=not a.no_proc)
    print(f"site: {r['pages']} pages ({r['chapters']} notebooks), {r['bytes'] / 2**20:.1f} MiB in {r['out']}, built in {r['seconds']:.1f}s")
    print(f"({r['proc_seconds']:.1f}s of it nbdev's processing, {r['seconds'] - r['proc_seconds']:.1f}s the pages)")
    print(f"open {Path(r['out']) / 'index.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
