"""Sphinx configuration of the course book: the notebooks, executed in small mode, plus docs/.

Build it with one command, ``bash scripts/build_book.sh`` (HTML in ``build/book/html``). The
script runs, from the repository root::

    BBITS_SMALL=1 sphinx-build -b html -E -c docs . build/book/html

The source directory is the repository root and this file's folder is only the configuration
directory, so that a link written for GitHub (``../notebooks/02_quantization_decomposition.ipynb``
from a page of docs/) is also a link of the book. ``include_patterns`` keeps the book to
``docs/*.md`` and ``notebooks/*.ipynb``; README.md, the package and the tests are not pages.

Notebooks are executed on every build (``nb_execution_mode = "force"``): a stale output would
teach something the library no longer does. A cell that raises fails the build: every notebook
still runs and every page is written, then the build logs an error that names each failed
notebook and shows its failing cell and traceback, and sphinx-build exits with code 1. The
notebooks read ``BBITS_SMALL`` (set by the build script) and run their short "small mode"
versions. Everything here uses Sphinx's bundled theme (alabaster) and myst-nb: no Node, no
downloads at build time. MathJax (equations) and the widgets' JavaScript load from a CDN when a
reader opens the book online.
"""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))          # the checkout being documented, installed or not

from bbits_ref._version import __version__  # after the path is set

# -- project
project = "The bbits_ref course"
author = "bbits_ref contributors"
copyright = "bbits_ref contributors; code MIT"
version = release = __version__

# -- sources: the repository root, restricted to the course notebooks and docs/
root_doc = "docs/index"
include_patterns = ["docs/*.md", "notebooks/*.ipynb"]
# Sphinx walks every directory that is not excluded: skip all the others (.venv, .git, build, …).
exclude_patterns = sorted(p.name for p in ROOT.iterdir()
                          if p.is_dir() and p.name not in ("docs", "notebooks")) + [
    "**/.ipynb_checkpoints", "docs/_build"]

# githubpages writes .nojekyll, so that GitHub Pages serves _static/ and _images/ as they are.
extensions = ["myst_nb", "sphinx.ext.githubpages"]
source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb"}

# -- MyST: $…$ and $$…$$ math as in the notebooks and docs/method.md; anchors for "#section" links
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3

# -- notebook execution (small mode: the build script exports BBITS_SMALL=1)
nb_execution_mode = os.environ.get("BBITS_BOOK_EXECUTE", "force")   # "off" renders inputs only
nb_execution_timeout = int(os.environ.get("BBITS_BOOK_CELL_TIMEOUT", "600"))   # seconds per cell
# A failing notebook fails the build, but at its end (see setup() below), after every other
# notebook has run and the pages are written, and with the failing cell and its traceback.
nb_execution_raise_on_error = False
nb_execution_show_tb = False
nb_execution_in_temp = False            # run in notebooks/, where the notebooks expect to be
nb_merge_streams = True                 # one block per cell for stdout, not one per print

# -- HTML: the theme bundled with Sphinx, readable offline except for the math
html_theme = "alabaster"
html_title = "bbits_ref course"
html_theme_options = {
    "description": "Bayesian Bits (van Baalen et al., NeurIPS 2020) in NumPy, one notebook at a time",
    "fixed_sidebar": True,
    "page_width": "1100px",
    "sidebar_width": "240px",
}
html_sidebars = {"**": ["about.html", "navigation.html", "relations.html", "searchbox.html"]}
# The book's front page is docs/index.html; this page at the top of the output sends a visitor of
# the site's root (e.g. GitHub Pages) there.
html_extra_path = ["_root"]          # relative to this folder: docs/_root/index.html
html_show_sourcelink = False
html_copy_source = False
# MathJax comes from Sphinx's default CDN: it renders the equations wherever the book is online
# (GitHub Pages); opened without a network, the TeX source is shown instead.

suppress_warnings = ["myst.header"]     # notebooks start at "# 00 · …" and may skip levels


# -- a notebook that raised fails the build

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
TRACEBACK_LINES = 80        # the end of each failed notebook's report: the cell and the error
CELL_ERROR = "An error occurred while executing the following cell"   # nbclient's message


def failed_notebooks(env) -> list[tuple[str, str]]:
    """(document name, traceback without colours) of every notebook whose execution failed."""
    from myst_nb.sphinx_ import NbMetadataCollector

    failed = []
    for docname in sorted(env.found_docs):
        data = NbMetadataCollector.get_exec_data(env, docname)
        if data and not data.get("succeeded", True):
            failed.append((docname, _ANSI.sub("", data.get("traceback") or data.get("error") or "")))
    return failed


def _fail_on_notebook_errors(app, exception) -> None:
    """build-finished: log every failed notebook with its failing cell, and exit with code 1."""
    if exception is not None:
        return                      # Sphinx is already reporting another error
    failed = failed_notebooks(app.env)
    if not failed:
        return
    parts = [(f"{len(failed)} notebook(s) raised while the book was built (small mode: "
              f"BBITS_SMALL={os.environ.get('BBITS_SMALL', '')!r}); fix them, or run one with "
              f"`BBITS_SMALL=1 python -m pytest --nbval-lax --nbval-current-env NOTEBOOK`:")]
    for docname, tb in failed:
        # From the failing cell on: the frames of the executor above it say nothing about it.
        tb = tb[tb.find(CELL_ERROR):] if CELL_ERROR in tb else tb
        lines = tb.strip().splitlines()
        parts.append(f"\n--- {docname}.ipynb (last {min(len(lines), TRACEBACK_LINES)} lines of "
                     f"{len(lines)}) ---\n" + "\n".join(lines[-TRACEBACK_LINES:]))
    # An error in the log and exit code 1, rather than an exception: Sphinx would wrap that in a
    # crash report that asks to report a bug in Sphinx.
    from sphinx.util import logging

    logging.getLogger(__name__).error("\n".join(parts))
    app.statuscode = 1


def setup(app):
    if not (Path(app.srcdir) / root_doc).with_suffix(".md").is_file():
        from sphinx.errors import ConfigError

        raise ConfigError(f"the book's source is the repository root, not {app.srcdir}: build it "
                          "with `bash scripts/build_book.sh` (sphinx-build -c docs . OUTDIR)")
    app.connect("build-finished", _fail_on_notebook_errors)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
