#!/usr/bin/env bash
# Build the course book: every notebook executed in small mode, with its outputs, plus docs/, as
# static HTML in build/book/html (open build/book/html/index.html, or publish the folder).
#
#     bash scripts/build_book.sh
#
# Needs the `book` extra (Sphinx and myst-nb): pip install -e '.[book]'.  Run it inside the
# project's virtualenv; without an active one it uses .venv in the repository root when present,
# and PYTHON=/path/to/python chooses the interpreter explicitly (its Jupyter kernel runs the
# notebooks).
# A notebook cell that raises fails the build (exit code 1), naming the notebook and the cell.
#
# Environment:
#   BBITS_SMALL=0               execute the full-length notebooks instead (much slower)
#   BBITS_BOOK_EXECUTE=off      render the notebooks without executing them (no outputs)
#   BBITS_BOOK_CELL_TIMEOUT=N   seconds a single cell may take (default 600)
#   BBITS_BOOK_OUT=DIR          output folder (default build/book/html)
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

if [[ -z "${PYTHON:-}" && -z "${VIRTUAL_ENV:-}" && -x .venv/bin/python ]]; then
    # shellcheck disable=SC1091
    source .venv/bin/activate
fi
python="${PYTHON:-python}"

if ! "$python" -c 'import sphinx, myst_nb' >/dev/null 2>&1; then
    echo "build_book.sh needs Sphinx and myst-nb, which $(command -v "$python") does not have." >&2
    echo "Install the book extra first: $python -m pip install -e '.[book]'" >&2
    exit 1
fi

out="${BBITS_BOOK_OUT:-build/book/html}"
# The notebooks' short versions: their training runs take a few hundred images, one or two epochs.
export BBITS_SMALL="${BBITS_SMALL:-1}"
# One BLAS thread per kernel: the small runs are too short to gain from more, and CI shares cores.
export OPENBLAS_NUM_THREADS="${OPENBLAS_NUM_THREADS:-1}" OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
# Matplotlib keeps its font cache out of the user's home folder.
export MPLCONFIGDIR="${MPLCONFIGDIR:-$repo_root/build/book/mplconfig}"
# The notebooks' kernels get an IPython folder of their own: no startup file or setting of the
# user's changes what the book shows, and the kernels' start-up warnings stay out of the log.
export IPYTHONDIR="$repo_root/build/book/ipython"
mkdir -p "$out" "$MPLCONFIGDIR" "$IPYTHONDIR/profile_default"
echo 'c.IPKernelApp.log_level = "ERROR"' > "$IPYTHONDIR/profile_default/ipython_kernel_config.py"

# Start from an empty output folder, but only if this script made it (it leaves a marker there)
# or Sphinx did (.buildinfo): never delete a folder this script did not write.
marker=".built-by-build_book"
if [[ -n "$(ls -A "$out")" ]]; then
    if [[ -f "$out/$marker" || -f "$out/.buildinfo" ]]; then
        rm -rf "$out"
        mkdir -p "$out"
    else
        echo "$out is not empty and was not written by this script; choose another folder with" \
             "BBITS_BOOK_OUT=DIR, or empty it yourself" >&2
        exit 1
    fi
fi
echo "written by scripts/build_book.sh; the next build empties this folder" > "$out/$marker"

start=$SECONDS
echo "==> building the book into $out (notebooks executed: ${BBITS_BOOK_EXECUTE:-force}, BBITS_SMALL=$BBITS_SMALL)"
# -c docs: the configuration lives in docs/; the source is the repository root (see docs/conf.py).
# -E: read every page again, so every notebook runs again against the library as it is now.
# -d: Sphinx's cache next to, not inside, the published folder.  -q: warnings and errors only.
# A notebook that raised is reported at the end, with its failing cell (docs/conf.py).
if ! "$python" -m sphinx -b html -E -q -c docs -d build/book/doctrees . "$out"; then
    echo "==> the book build FAILED after $((SECONDS - start)) s (see the errors above); the pages" \
         "written so far are in $out" >&2
    exit 1
fi
echo "==> book built in $((SECONDS - start)) s: open $out/index.html"
