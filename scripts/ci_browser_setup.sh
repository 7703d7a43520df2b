#!/usr/bin/env bash
# Install what the browser tests (tests/test_browser.py, tests/test_book.py) need: Debian's
# Chromium and the `playwright` Python package.
#
# Idempotent, and it never fails the build: if apt or pip cannot install something (no root, no
# network, not Debian), it says so and exits 0, and the browser test then skips with a message
# naming what is missing.  We never run `playwright install`: it downloads its own browser build,
# which this project does not rely on; the test drives /usr/bin/chromium instead.
#
# Run it with the Python that runs the tests (inside the virtualenv), e.g. from run_tests.sh:
#     bash scripts/ci_browser_setup.sh
set -uo pipefail

python="${PYTHON:-python}"
chromium="${BBITS_CHROMIUM:-/usr/bin/chromium}"   # the same variable as tests/test_browser.py

if [[ -x "$chromium" ]]; then
    echo "chromium: already installed ($("$chromium" --version 2>/dev/null | head -n 1))"
elif command -v apt-get >/dev/null 2>&1; then
    echo "chromium: installing Debian's package (apt-get install chromium)"
    sudo=""
    if [[ $(id -u) -ne 0 ]] && command -v sudo >/dev/null 2>&1; then sudo="sudo -n"; fi
    # Bounded, so a hanging mirror cannot eat the CI time budget.
    if timeout 300 $sudo apt-get update -qq &&
        DEBIAN_FRONTEND=noninteractive timeout 900 $sudo apt-get install -y -qq chromium >/dev/null; then
        echo "chromium: installed"
    else
        echo "chromium: could not be installed; the browser tests (tests/test_browser.py, tests/test_book.py) will skip" >&2
    fi
else
    echo "chromium: no apt-get on this machine; the browser tests (tests/test_browser.py, tests/test_book.py) will skip" >&2
fi

if "$python" -c 'import playwright.sync_api' >/dev/null 2>&1; then
    echo "playwright: already installed"
elif "$python" -m pip install --quiet playwright; then
    echo "playwright: installed (the Python package only; no browser download)"
else
    echo "playwright: could not be installed; the browser tests (tests/test_browser.py, tests/test_book.py) will skip" >&2
fi
exit 0
