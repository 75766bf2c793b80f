"""A real headless Chromium for the browser tests (Debian's `chromium` and `chromium-driver`, driven by Selenium)."""
import os, shutil
import pytest

CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-dev-shm-usage", "--window-size=1280,900")

def _find(env: str, *names: str) -> str | None:
    if os.environ.get(env): return os.environ[env]
    for n in names:
        if p := shutil.which(n): return p
    return None

def chromium_driver(timeout: float = 30):
    """A headless Chromium WebDriver; skips the test with the install command when the browser or driver is missing."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is missing: pip install -e '.[dev]'")
    browser = _find("CHROMIUM", "chromium", "chromium-browser", "google-chrome")
    driver = _find("CHROMEDRIVER", "chromedriver")
    if not (browser and driver):
        pytest.skip("headless Chromium needs the Debian packages `chromium` and `chromium-driver` "
                    "(apt-get install chromium chromium-driver), or $CHROMIUM and $CHROMEDRIVER")
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for f in CHROMIUM_FLAGS: opts.add_argument(f)
    d = webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=driver))
    d.set_page_load_timeout(timeout)
    return d

@pytest.fixture
def browser():
    "A headless Chromium for one test, closed afterwards."
    d = chromium_driver()
    try: yield d
    finally: d.quit()
