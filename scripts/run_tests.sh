#!/usr/bin/env bash
# Install bbits_ref with its notebook and test extras, check every primitive's gradient, run the tests.
#
# Needs only Python >= 3.11 and pip.  Without an active virtualenv it creates (or reuses) .venv in
# the repository root, so a fresh clone works with one command:
#     bash scripts/run_tests.sh
# Extra arguments go to pytest:
#     bash scripts/run_tests.sh -k engine -x
# Set PYTHON=/path/to/python3.11 to choose the interpreter that creates .venv.
# In CI (or with BBITS_TEST_BOOK=1) the tests also build the course book (scripts/build_book.sh).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

step() { echo; echo "==> $*"; }

if [[ -z "${VIRTUAL_ENV:-}" ]]; then
    python="${PYTHON:-python3}"
    if [[ ! -x .venv/bin/python ]]; then
        # Check the version first: pip's own message for a too-old Python is hard to read.
        if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
            echo "bbits_ref needs Python >= 3.11; '$python' is $("$python" --version 2>&1)." >&2
            echo "Install Python 3.11+ or run: PYTHON=/path/to/python3.11 bash scripts/run_tests.sh" >&2
            exit 1
        fi
        step "creating virtualenv $repo_root/.venv with $("$python" --version 2>&1)"
        "$python" -m venv .venv
    fi
    step "using virtualenv $repo_root/.venv"
    # shellcheck disable=SC1091
    source .venv/bin/activate
else
    step "using the active virtualenv $VIRTUAL_ENV"
fi

start=$SECONDS
step "upgrading pip"
python -m pip install --quiet --upgrade pip
step "installing bbits_ref (editable) with the notebooks and test extras"
python -m pip install --quiet -e '.[notebooks,test]'
if [[ -n "${CI:-}" && "${CI}" != "false" || -n "${BBITS_TEST_TORCH:-}" ]]; then
    # The PyTorch implementation and its conformance tests (skipped without torch), with numba for
    # its CPU kernels (the torch extra of pyproject.toml).  2.13.0 is the CPU build that CI
    # machines have locally; set BBITS_TEST_TORCH=1 to include it elsewhere.
    step "installing torch==2.13.0 and numba for bbits_ref.torch_impl (CI or BBITS_TEST_TORCH=1)"
    python -m pip install --quiet 'torch==2.13.0' 'numba>=0.59'
fi
if [[ -n "${CI:-}" && "${CI}" != "false" || -n "${BBITS_TEST_CLUSTER:-}" ]]; then
    # The `cluster` extra of pyproject.toml (tests/test_sweep_dask.py runs a sweep on a Dask
    # LocalCluster; skipped without it).  Set BBITS_TEST_CLUSTER=1 to include it elsewhere.
    step "installing the cluster extra, dask[distributed], for bbits-ref sweep --scheduler (CI or BBITS_TEST_CLUSTER=1)"
    python -m pip install --quiet 'dask[distributed]>=2024.1'
fi
if [[ -n "${CI:-}" && "${CI}" != "false" || -n "${BBITS_TEST_BOOK:-}" ]]; then
    # Sphinx and myst-nb for tests/test_book.py, which builds the course book (every notebook
    # executed in small mode, a few minutes) and opens it in Chromium; skipped without them.
    step "installing the book extra (Sphinx, myst-nb) for tests/test_book.py (CI or BBITS_TEST_BOOK=1)"
    python -m pip install --quiet -e ".[book]"
fi
echo "    install took $((SECONDS - start)) s"
if [[ -n "${CI:-}" && "${CI}" != "false" ]]; then
    step "installing Chromium and playwright for tests/test_browser.py and tests/test_book.py (CI only; never fails)"
    bash scripts/ci_browser_setup.sh
fi

start=$SECONDS
step "checking the gradient of every primitive: python -m bbits_ref.autograd.gradcheck"
python -m bbits_ref.autograd.gradcheck
echo "    gradient check took $((SECONDS - start)) s"

start=$SECONDS
step "running the tests: python -m pytest -n 2 -q $*"
# No `exec`: we print the time afterwards; `set -e` still passes pytest's failure on.
python -m pytest -n 2 -q "$@"
echo "    tests took $((SECONDS - start)) s"

start=$SECONDS
step "running every notebook in small mode: BBITS_SMALL=1 python -m pytest --nbval-lax notebooks/"
# --nbval-current-env: run the kernels with this virtualenv's Python.
BBITS_SMALL=1 python -m pytest --nbval-lax --nbval-current-env notebooks/ -p no:xdist -q
echo "    notebooks took $((SECONDS - start)) s"
