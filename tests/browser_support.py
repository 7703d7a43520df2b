"""What the real-browser tests share (tests/test_browser.py, tests/test_book.py): the Chromium
they drive, its headless flags, and a clear skip when it or playwright is missing."""
import os
from pathlib import Path

import pytest

CHROMIUM = Path(os.environ.get("BBITS_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def playwright_or_skip(purpose: str):
    """``sync_playwright``, or a skip that says how to enable the test (``purpose``: what for)."""
    if not CHROMIUM.exists():
        pytest.skip(f"Chromium not found at {CHROMIUM}: run `bash scripts/ci_browser_setup.sh` "
                    f"(apt-get install chromium) to {purpose}")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the `playwright` Python package is not installed: run `bash "
                    "scripts/ci_browser_setup.sh` (pip install playwright; no browser download)")
    return sync_playwright
