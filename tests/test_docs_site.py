"""The course's website, built as a reader builds it (`python tools/build_site.py`): nbdev's own processing of every
notebook, a page per notebook with the sidebar of nbs/sidebar.yml, every internal link resolving, and a chapter page
whose figures a real headless Chromium draws. The tests read `_docs/` when it is newer than everything it is made from
(CI's "docs site" step has just built it); otherwise the first test to need it builds it, one pytest worker at a time."""
import fcntl, hashlib, re, subprocess, sys, tempfile
from pathlib import Path
from urllib.parse import unquote
import pytest

ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT / "_docs"


def sources():
    "Every file the site is made from."
    return [*ROOT.glob("nbs/*.ipynb"), *ROOT.glob("nbs/*.yml"), *ROOT.glob("course/**/*.md"),
            *ROOT.glob("course/solutions/*.ipynb"), ROOT / "tools" / "build_site.py", ROOT / "settings.ini"]


def up_to_date() -> bool:
    "Is _docs/ this script's build (not Quarto's), newer than every file it is made from?"
    index = SITE / "index.html"
    return (index.is_file() and index.stat().st_mtime >= max(p.stat().st_mtime for p in sources())
            and 'class="site-nav"' in index.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def site():
    lock = Path(tempfile.gettempdir()) / f"nanochat_nb-site-{hashlib.sha1(str(ROOT).encode()).hexdigest()[:8]}.lock"
    with open(lock, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)          # pytest -n 2: one worker builds, the other waits and reads the result
        if not up_to_date():
            p = subprocess.run([sys.executable, "tools/build_site.py"], cwd=ROOT, capture_output=True, text=True, timeout=600)
            assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
            assert re.search(r"^site: \d+ pages \(\d+ notebooks\), [\d.]+ MiB in .*, built in [\d.]+s$", p.stdout, re.M), p.stdout
            assert up_to_date()
    return SITE


def test_every_notebook_has_a_page_and_the_sidebar_knows_them_all(site):
    import yaml
    nbs = sorted(p.name for p in (ROOT / "nbs").glob("*.ipynb"))
    for nb in nbs: assert (site / (nb[:-6] + ".html")).stat().st_size > 2000, nb
    spec = yaml.safe_load((ROOT / "nbs" / "sidebar.yml").read_text())["website"]["sidebar"]["contents"]
    sections = {i["section"]: i["contents"] for i in spec if isinstance(i, dict)}
    assert sorted(["index.ipynb", *sections["Core path"], *sections["Deep dives"]]) == nbs
    from nanochat_nb.course_stats import chapter_time                          # the two sections are what bench course counts
    for nb in sections["Deep dives"]: assert chapter_time(ROOT / "nbs" / nb).deep_dive, nb
    for nb in sections["Core path"]: assert not chapter_time(ROOT / "nbs" / nb).deep_dive, nb
    index = (ROOT / "nbs" / "index.ipynb").read_text()
    for nb in nbs:
        if nb != "index.ipynb": assert f"]({nb})" in index, f"nbs/index.ipynb does not list {nb}"
    for md in ("course/syllabus.html", "course/references.html", "course/README.html"): assert (site / md).is_file(), md
    page = (site / "10_sft.html").read_text()
    assert "show_doc" not in page and "#| export" not in page and "nbdev_export()" not in page   # directives and hidden cells gone


def test_every_internal_link_resolves(site):
    bad = []
    for page in site.rglob("*.html"):
        for attr, url in re.findall(r'(href|src)="([^"]*)"', page.read_text()):
            if not url or re.match(r"^(https?:|mailto:|#|data:|javascript:)", url): continue
            target = (page.parent / unquote(url.split("#")[0])).resolve()
            if not target.is_file(): bad.append(f"{page.relative_to(site)}: {attr}={url}")
    assert not bad, bad[:20]


def test_a_chapter_page_draws_its_figures_and_its_sidebar_works(site, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    d = browser
    d.get((site / "04_dataloader.html").as_uri())
    WebDriverWait(d, 20).until(lambda d: d.execute_script("return document.readyState") == "complete")
    imgs = d.execute_script("return [...document.querySelectorAll('.site-page img')].map(i => [i.complete, i.naturalWidth])")
    assert len(imgs) >= 3 and all(ok and w > 100 for ok, w in imgs), imgs
    assert "04 · Packing" in d.find_element(By.TAG_NAME, "h1").text
    current = d.find_element(By.CSS_SELECTOR, ".site-nav a.current")
    assert "Packing" in current.text and current.is_displayed()
    d.find_element(By.XPATH, "//nav[@class='site-nav']//a[contains(., '05 ·')]").click()
    WebDriverWait(d, 20).until(lambda d: d.current_url.endswith("05_distributed.html"))
    assert "05 · Distributed" in d.find_element(By.TAG_NAME, "h1").text
    d.find_element(By.CSS_SELECTOR, ".site-pager a").click()                      # the pager goes back to the previous chapter
    WebDriverWait(d, 20).until(lambda d: d.current_url.endswith("04_dataloader.html"))
    d.set_window_size(400, 800)                                                    # a phone: the sidebar gives way to a menu link
    WebDriverWait(d, 5).until(lambda d: not d.find_element(By.CSS_SELECTOR, ".site-nav").is_displayed())
    assert d.find_element(By.CSS_SELECTOR, ".site-menu a").is_displayed()
    assert d.execute_script("return document.documentElement.scrollWidth") <= 420
