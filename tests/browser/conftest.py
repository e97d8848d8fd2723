"""Fixtures for the browser tests: a real Chromium (Debian's `chromium` package) driven by Playwright.

    apt-get install -y chromium          # the browser; Playwright's own download is never used
    .venv/bin/python -m pytest tests/browser -q
    EMBER_SCREENSHOTS=/tmp/shots .venv/bin/python -m pytest tests/browser -q     # keep the screenshots

Without the browser or the playwright package every test here is skipped with the reason. Screenshots of
each page go to $EMBER_SCREENSHOTS (default: a temporary folder, printed).
"""

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("EMBER_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", "--disable-dev-shm-usage"]


def _why_not() -> str | None:
    if not Path(CHROMIUM).exists():
        return (f"no Chromium at {CHROMIUM}: install Debian's package (apt-get install -y chromium) or set "
                "EMBER_CHROMIUM; .ci/run does this when root")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is missing: pip install -e '.[dev]' (never `playwright install`)"
    return None


@pytest.fixture(scope="session")
def shots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("EMBER_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"\nconsole screenshots: {folder}")
    return folder


@pytest.fixture(scope="module")
def browser():
    why = _why_not()
    if why:
        pytest.skip(why)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()
