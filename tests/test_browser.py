"""Notebook 02 in a real browser: JupyterLab + headless Chromium, driven like a student would.

Starts JupyterLab on 127.0.0.1 (a free port, a known token, small mode), opens a copy of
notebooks/02_quantization_decomposition.ipynb in Debian's Chromium through Playwright, runs all
cells from the Run menu, waits for the quantizer widget, moves the "bits" (or "β") slider with
the keyboard and checks that the "max |error| = ..." text changes, and changes back.

Needs /usr/bin/chromium and the `playwright` Python package (scripts/ci_browser_setup.sh
installs both); the test skips, saying what is missing, only when one of them is absent.
Playwright's own browser download (`playwright install`) is never used. The browser may only
talk to the local server: every other request is aborted.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from browser_support import CHROMIUM, CHROMIUM_ARGS, playwright_or_skip

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "02_quantization_decomposition.ipynb"
TOKEN = "bbits-ref-browser-test"
RESULT_TEXT = "max |error| ="
SLIDER_LABEL = re.compile(r"^\s*(bits|β)\s*$")

# Bounded waits (seconds); the whole test stays well under 3 minutes.
SERVER_START = 60
PAGE_READY = 60
RUN_ALL = 90          # notebook 02 in small mode, from "Run All Cells" to the kernel going idle
SLIDER_RESPONSE = 20

pytestmark = pytest.mark.slow


def _playwright_or_skip():
    return playwright_or_skip("enable the real-browser widget test")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_lab_settings(settings_dir: Path) -> None:
    """No news or update checks (no traffic beyond this machine, no pop-ups over the notebook)."""
    d = settings_dir / "@jupyterlab" / "apputils-extension"
    d.mkdir(parents=True, exist_ok=True)
    (d / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))


class LabServer:
    """A JupyterLab server on 127.0.0.1 serving ``root_dir``; its log goes to ``log_path``."""

    def __init__(self, root_dir: Path, work: Path):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = work / "jupyterlab.log"
        for sub in ("runtime", "config", "data", "ipython", "settings", "workspaces"):
            (work / sub).mkdir(parents=True, exist_ok=True)
        _write_lab_settings(work / "settings")
        env = dict(os.environ)
        env.update({
            "BBITS_SMALL": "1",
            # the checkout under test comes first, installed or not
            "PYTHONPATH": os.pathsep.join([str(REPO)] + [p for p in [env.get("PYTHONPATH")] if p]),
            # keep the user's Jupyter/IPython files out of it (and untouched)
            "JUPYTER_RUNTIME_DIR": str(work / "runtime"),
            "JUPYTER_CONFIG_DIR": str(work / "config"),
            "IPYTHONDIR": str(work / "ipython"),
        })
        cmd = [sys.executable, "-m", "jupyterlab",
               "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={self.port}",
               "--ServerApp.port_retries=0", "--ServerApp.open_browser=False",
               "--ServerApp.allow_root=True", f"--IdentityProvider.token={TOKEN}",
               f"--ServerApp.root_dir={root_dir}",
               f"--LabApp.user_settings_dir={work / 'settings'}",
               f"--LabApp.workspaces_dir={work / 'workspaces'}",
               "--LabApp.news_url=", "--LabApp.extension_manager=readonly",
               "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                     cwd=root_dir, start_new_session=True)

    def log_tail(self, n=40) -> str:
        if not self._log.closed:
            self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with code {self.proc.returncode}:\n"
                                   f"{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/api/status?token={TOKEN}",
                                            timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"JupyterLab did not answer on {self.url} within {timeout} s:\n"
                           f"{self.log_tail()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()   # JupyterLab shuts its kernels down on SIGTERM
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)   # its own session: the server and its kernels
                self.proc.wait(timeout=5)
        self._log.close()


def _only_local(route):
    url = route.request.url
    if url.startswith(("http://127.0.0.1:", "ws://127.0.0.1:", "data:", "blob:", "about:")):
        route.continue_()
    else:
        route.abort()


def _kernel_status(page) -> str:
    """The status bar's kernel item, e.g. "Python 3 (ipykernel) | Idle" ("" before it shows)."""
    items = page.locator(".jp-StatusBar-TextItem", has_text=" | ").all_inner_texts()
    return items[0].strip() if items else ""


def _open_notebook(page, server: LabServer, name: str) -> None:
    page.goto(f"{server.url}/lab/tree/{name}?token={TOKEN}", timeout=PAGE_READY * 1000)
    page.locator(".jp-NotebookPanel .jp-Cell").first.wait_for(timeout=PAGE_READY * 1000)
    # Wait for a running kernel ("No Kernel | Initializing" comes first). A notebook without
    # kernel metadata asks which kernel to use: take the default.
    deadline = time.monotonic() + PAGE_READY
    status = ""
    while time.monotonic() < deadline:
        dialog = page.locator(".jp-Dialog .jp-mod-accept")
        if dialog.count():
            dialog.first.click()
        status = _kernel_status(page)
        if status.endswith("| Idle") and not status.startswith("No Kernel"):
            return
        page.wait_for_timeout(250)
    raise TimeoutError(f"the kernel of {name} did not become idle within {PAGE_READY} s "
                       f"(status bar: {status!r})")


def _run_all_cells(page) -> None:
    """Run > Run All Cells, from the menu bar, as a student would."""
    page.locator("#jp-menu-panel .lm-MenuBar-item", has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu-item:visible", has_text=re.compile(r"^Run All Cells")).first.click()


def _wait_until_done(page, timeout: float) -> None:
    """Wait until the kernel is idle and every code cell has run, or a cell has raised."""
    state = page.wait_for_function(
        """() => {
            const failed = [...document.querySelectorAll(
                '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')]
                .map(e => e.textContent).find(t => t.includes('Traceback (most recent call last)'));
            if (failed) return 'error: ' + failed.slice(0, 1500);
            const status = [...document.querySelectorAll('.jp-StatusBar-TextItem')]
                .map(e => e.textContent.trim()).find(t => t.includes(' | '));
            const idle = status && status.endsWith('| Idle') && !status.startsWith('No Kernel');
            if (!idle) return false;
            const prompts = [...document.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')];
            return prompts.length > 0 && prompts.every(p => /\\[\\d+\\]/.test(p.textContent))
                && 'done';
        }""", timeout=timeout * 1000, polling=250).json_value()
    if state != "done":
        raise AssertionError(f"a cell of the notebook raised in the browser:\n{state[7:]}")


def drive_quantizer_widget(notebook: Path, work: Path, screenshot: Path | None = None) -> dict:
    """Open ``notebook`` in JupyterLab in Chromium, run it, move the slider; returns what it saw.

    Returns {"slider": label, "keys": (key, key back), "before": text, "after_step": text,
    "after_back": text, "values": [slider readouts], "seconds": float}; on failure raises an
    AssertionError with a screenshot path and the end of JupyterLab's log.
    """
    sync_playwright = _playwright_or_skip()
    t0 = time.monotonic()
    root = work / "notebooks"
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(notebook, root / notebook.name)
    server = LabServer(root, work / "jupyter")
    try:
        server.wait_ready(SERVER_START)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS,
                                         headless=True, timeout=30_000)
            try:
                context = browser.new_context(viewport={"width": 1280, "height": 1000})
                context.route("**/*", _only_local)
                page = context.new_page()
                page.set_default_timeout(SLIDER_RESPONSE * 1000)
                try:
                    _open_notebook(page, server, notebook.name)
                    _run_all_cells(page)
                    _wait_until_done(page, RUN_ALL)
                    return _move_slider(page) | {"seconds": time.monotonic() - t0}
                except Exception as exc:
                    shot = screenshot or work / "failure.png"
                    page.screenshot(path=str(shot))
                    what = (str(exc) if isinstance(exc, AssertionError)
                            else f"{type(exc).__name__}: {exc}")
                    raise AssertionError(f"{what}\n\nscreenshot: {shot}\n"
                                         f"JupyterLab log ({server.log_path}), last lines:\n"
                                         f"{server.log_tail(20)}") from exc
                finally:
                    if screenshot is not None:
                        page.screenshot(path=str(screenshot))
            finally:
                browser.close()
    finally:
        server.stop()


def _pick_slider(area):
    """The enabled "bits" slider of the output area, else its enabled "β" slider."""
    for label in ("bits", "β"):
        candidates = area.locator(".widget-slider").filter(
            has=area.page.locator(".widget-label", has_text=re.compile(rf"^\s*{label}\s*$")))
        for i in range(candidates.count()):
            slider = candidates.nth(i)
            if not slider.locator(".noUi-target[disabled]").count():
                return label, slider
    raise AssertionError("the quantizer widget shows no enabled slider labelled 'bits' or 'β'")


def _move_slider(page) -> dict:
    slider = page.locator(".widget-slider").filter(
        has=page.locator(".widget-label", has_text=SLIDER_LABEL))
    # The output area of the cell that shows both the slider and the result text.
    area = page.locator(".jp-OutputArea-output").filter(has=slider).filter(has_text=RESULT_TEXT)
    if not area.count():
        raise AssertionError(f"no cell output shows a slider labelled bits/β together with "
                             f"{RESULT_TEXT!r}; the page shows sliders labelled "
                             f"{page.locator('.widget-slider .widget-label').all_inner_texts()}")
    area = area.first
    area.scroll_into_view_if_needed()
    label, slider = _pick_slider(area)
    result = area.locator(".widget-html-content", has_text=RESULT_TEXT).first

    def result_text():
        return re.search(r"max \|error\| = [^,\s]+", result.inner_text()).group(0)

    def press_and_wait(key, old):
        handle.focus()
        handle.press(key)
        deadline = time.monotonic() + SLIDER_RESPONSE
        while time.monotonic() < deadline:
            new = result_text()
            if new != old:
                return new
            page.wait_for_timeout(200)
        raise AssertionError(f"after {key} on the {label!r} slider the text still reads {old!r} "
                             f"(waited {SLIDER_RESPONSE} s)")

    readout = slider.locator(".widget-readout")
    handle = slider.locator(".noUi-handle").first
    # One step and back; from the top of the range the step goes down first.
    value, top = (float(handle.get_attribute(a)) for a in ("aria-valuenow", "aria-valuemax"))
    at_max = value >= top
    there, back = ("ArrowLeft", "ArrowRight") if at_max else ("ArrowRight", "ArrowLeft")
    before, value_before = result_text(), readout.inner_text()
    after_step = press_and_wait(there, before)
    value_step = readout.inner_text()
    after_back = press_and_wait(back, after_step)
    return {"slider": label, "keys": (there, back), "before": before, "after_step": after_step,
            "after_back": after_back, "values": [value_before, value_step, readout.inner_text()]}


def test_quantizer_widget_responds_to_the_slider_in_a_real_browser(tmp_path):
    _playwright_or_skip()
    if not NOTEBOOK.exists():
        pytest.skip(f"{NOTEBOOK.relative_to(REPO)} does not exist yet (course helper A writes it)")
    seen = drive_quantizer_widget(NOTEBOOK, tmp_path)
    assert seen["after_step"] != seen["before"], seen
    # Back to the starting position: the same numbers as before (the widget is a pure function).
    assert seen["after_back"] == seen["before"], seen
    values = seen["values"]          # the slider's own readout moved one step and back
    assert values[0] != values[1] and values[2] == values[0], seen
    assert seen["seconds"] < 180, seen
