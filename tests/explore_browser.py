"""The explorer in a real browser: JupyterLab on 127.0.0.1, Debian's headless Chromium driven by Playwright.

`run_check` copies notebook 05 with its parameters injected (papermill, not
executed) into a folder, serves that folder with JupyterLab, opens the
notebook, runs all its cells from the Run menu, waits for the widgets, then
moves the image slider and presses the edit button, and checks each time that
the pixels of the image widget changed (read back through a canvas, so a new
blob URL with the same picture would not pass). With a prior it presses the
generate panel's sample button (the pixels of its image must change) and its
resample button (its line must say what was redrawn); without one, the panel
must say how to get one. It ends with a screenshot.

`make explore-check` runs it as a script (`python tests/explore_browser.py
--help`); tests/test_explore.py runs it on a tiny checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "05_explore.ipynb"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",  # root in a container: Chromium's sandbox needs namespaces it does not get
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# JupyterLab's first start builds its settings and workspace; on a busy 2-core machine
# the page, the kernel and the first run of the cells have each taken tens of seconds.
SERVER_TIMEOUT_S = 90
PAGE_TIMEOUT_S = 120
CHANGE_TIMEOUT_S = 30

# Pixels of an <img> read back through a canvas: what the user sees, not the element's URL.
PIXELS_JS = """(selector) => {
  const img = document.querySelector(selector);
  if (!img || !img.complete || !img.naturalWidth) return null;
  const canvas = document.createElement('canvas');
  canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
  canvas.getContext('2d').drawImage(img, 0, 0);
  return canvas.toDataURL('image/png');
}"""


def missing_requirements() -> Optional[str]:
    """Why the check cannot run here, or None."""
    if not CHROMIUM.is_file():
        return f"no {CHROMIUM}: install Debian's chromium package (apt-get install -y chromium; .ci/run does)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright for Python is not installed (it is in the dev extra: pip install -e '.[dev]')"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare_folder(folder: Path, parameters: dict) -> Path:
    """Notebook 05 with `parameters` injected, unexecuted, and JupyterLab settings that keep pop-ups away."""
    import papermill

    folder.mkdir(parents=True, exist_ok=True)
    target = folder / NOTEBOOK.name
    papermill.execute_notebook(
        str(NOTEBOOK), str(target), parameters=parameters, prepare_only=True, kernel_name="vqlib", progress_bar=False
    )
    # No news or update notifications over the screenshot.
    settings = folder / ".lab" / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True, exist_ok=True)
    (settings / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False})
    )
    return target


def start_lab(folder: Path, port: int, token: str, log) -> subprocess.Popen:
    command = [
        str(Path(sys.executable).parent / "jupyter"),
        "lab",
        "--no-browser",
        "--ip=127.0.0.1",
        f"--port={port}",
        "--allow-root",  # CI and the project's machines run as root
        f"--ServerApp.token={token}",
        f"--ServerApp.root_dir={folder}",
        f"--LabApp.user_settings_dir={folder / '.lab' / 'settings'}",
        f"--LabApp.workspaces_dir={folder / '.lab' / 'workspaces'}",
    ]
    env = dict(os.environ, TQDM_DISABLE="1", JUPYTER_RUNTIME_DIR=str(folder / ".lab" / "runtime"))
    return subprocess.Popen(command, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT)


def wait_for_server(port: int, token: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + SERVER_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with code {process.returncode} before serving")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"JupyterLab did not answer on 127.0.0.1:{port} within {SERVER_TIMEOUT_S} s")


def wait_for_change(page, selector: str, before: Optional[str], what: str) -> str:
    deadline = time.monotonic() + CHANGE_TIMEOUT_S
    while time.monotonic() < deadline:
        now = page.evaluate(PIXELS_JS, selector)
        if now is not None and now != before:
            return now
        page.wait_for_timeout(200)
    raise AssertionError(f"{what}: the pixels of {selector} did not change within {CHANGE_TIMEOUT_S} s")


def shrink_png(path: Path, width: Optional[int] = None) -> None:
    """A screenshot as a 256-colour PNG (the page is mostly flat colour), optionally scaled to `width`."""
    from PIL import Image

    image = Image.open(path).convert("RGB")
    if width and image.width > width:
        image = image.resize((width, round(image.height * width / image.width)), Image.LANCZOS)
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def run_check(
    vqvae_checkpoint: str,
    classifier_checkpoint: Optional[str],
    screenshot: Path,
    *,
    folder: Optional[Path] = None,
    extra_parameters: Optional[dict] = None,
    prior_checkpoint: Optional[str] = None,
    viewport: tuple[int, int] = (1280, 2400),
) -> dict:
    """Serve, open, run, move, press, compare, screenshot. Returns timings and what was seen; raises on failure."""
    from playwright.sync_api import sync_playwright

    started = time.monotonic()
    own_folder = folder is None
    folder = Path(folder or tempfile.mkdtemp(prefix="vqlib-explore-"))
    parameters = {"vqvae_checkpoint": str(vqvae_checkpoint), **(extra_parameters or {})}
    if classifier_checkpoint:
        parameters["classifier_checkpoint"] = str(classifier_checkpoint)
    if prior_checkpoint:
        parameters["prior_checkpoint"] = str(prior_checkpoint)
    prepare_folder(folder, parameters)
    port, token = free_port(), secrets.token_hex(16)
    result: dict = {"port": port}
    log_path = folder / "jupyterlab.log"
    with open(log_path, "w") as log:
        lab = start_lab(folder, port, token, log)
        try:
            wait_for_server(port, token, lab)
            result["server_s"] = round(time.monotonic() - started, 1)
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
                try:
                    page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
                    page.set_default_timeout(PAGE_TIMEOUT_S * 1000)
                    page.goto(f"http://127.0.0.1:{port}/lab/tree/{NOTEBOOK.name}?token={token}")
                    page.wait_for_selector(".jp-NotebookPanel .jp-Notebook .jp-Cell")
                    # Run All before the kernel is connected is silently lost: wait for the status bar's "Idle".
                    page.wait_for_selector("text=/Python \\(vqlib\\) \\| Idle/")
                    result["page_s"] = round(time.monotonic() - started, 1)
                    page.locator(".lm-MenuBar-item", has_text="Run").first.click()
                    page.locator(".lm-Menu-item[data-command='runmenu:run-all']").click()
                    page.wait_for_selector("img.vqlib-edited-image", state="visible")
                    # Every code cell numbered: the whole notebook ran.
                    page.wait_for_function(
                        "() => Array.from(document.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt'))"
                        ".every(e => /\\[\\d+\\]/.test(e.textContent))"
                    )
                    result["run_all_s"] = round(time.monotonic() - started, 1)
                    errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
                    result["stderr_outputs"] = errors.count()
                    tracebacks = page.locator(".jp-RenderedText[data-mime-type='application/vnd.jupyter.error']")
                    if tracebacks.count():
                        raise AssertionError(f"a cell failed: {tracebacks.first.inner_text()[:500]}")

                    # 1. Move the slider of the image within its class: the image itself changes.
                    original = wait_for_change(page, "img.vqlib-original", None, "the first image")
                    page.locator(".vqlib-nth .noUi-handle").first.focus()
                    page.keyboard.press("ArrowRight")
                    wait_for_change(page, "img.vqlib-original", original, "moving the n-th-of-class slider")
                    result["slider_changed_image"] = True

                    # 2. Press the edit button: the decoded image changes.
                    edited = wait_for_change(page, "img.vqlib-edited-image", None, "the decoded image")
                    page.locator("button.vqlib-apply").click()
                    wait_for_change(page, "img.vqlib-edited-image", edited, "pressing the edit button")
                    result["edit_changed_image"] = True
                    result["probabilities"] = page.locator(".vqlib-probabilities").inner_text()[:400]
                    if classifier_checkpoint and "no classifier" in result["probabilities"]:
                        raise AssertionError("the classifier panel shows no probabilities")

                    # 3. The generate panel: sample a new code, resample the selection (or: how to get a prior).
                    info = page.locator(".vqlib-generate-info")
                    info.scroll_into_view_if_needed()
                    if prior_checkpoint or "No prior is loaded" not in info.inner_text():
                        page.locator("img.vqlib-generated-image").scroll_into_view_if_needed()
                        generated = wait_for_change(page, "img.vqlib-generated-image", None, "the generated image")
                        page.locator("button.vqlib-sample").click()
                        wait_for_change(page, "img.vqlib-generated-image", generated, "pressing sample")
                        result["sample_changed_image"] = True
                        # A redrawn cell may keep its code: what must change is the line that reports the draw.
                        page.locator("button.vqlib-resample").click()
                        page.wait_for_selector(".vqlib-generate-info >> text=/resampled \\d+ cell/")
                        result["resample_info"] = info.inner_text()[:300]
                    else:
                        result["generate_panel"] = "no prior: the panel says how to get one"
                    result["messages"] = page.evaluate(
                        "() => Array.from(document.querySelectorAll('[class*=\"vqlib-\"]'))"
                        ".filter(e => Array.from(e.classList).some(c => /^vqlib-.*-message$/.test(c)))"
                        ".map(e => e.innerText.trim()).filter(t => t)"
                    )
                    # Leave the pointer off the widgets, make the window as tall as the notebook, and
                    # photograph the notebook panel: all five parts in one picture.
                    page.mouse.move(0, 0)
                    # The notebook's scroll height holds blank space after the last cell: measure to its end.
                    hidden = page.evaluate(
                        "() => { const s = document.querySelector('.jp-NotebookPanel .jp-WindowedPanel-outer');"
                        " if (!s) return 0; const cells = s.querySelectorAll('.jp-Cell');"
                        " const last = cells[cells.length - 1].getBoundingClientRect().bottom;"
                        " const end = last - s.getBoundingClientRect().top + s.scrollTop;"
                        " s.scrollTop = 0; return Math.ceil(end - s.clientHeight); }"
                    )
                    if hidden > 0:
                        page.set_viewport_size({"width": viewport[0], "height": viewport[1] + hidden + 40})
                    page.wait_for_timeout(1000)
                    screenshot.parent.mkdir(parents=True, exist_ok=True)
                    page.locator(".jp-NotebookPanel").first.screenshot(path=str(screenshot))
                    shrink_png(screenshot)
                    result["screenshot"] = str(screenshot)
                    result["screenshot_bytes"] = screenshot.stat().st_size
                except Exception:
                    # What the page showed when it failed, for the person reading the error.
                    failed = screenshot.with_name(screenshot.stem + "-failed.png")
                    failed.parent.mkdir(parents=True, exist_ok=True)
                    page.screenshot(path=str(failed))
                    print(
                        f"explore-check failed; the page is in {failed}, JupyterLab's log in {log_path}",
                        file=sys.stderr,
                    )
                    raise
                finally:
                    browser.close()
        finally:
            lab.terminate()
            try:
                lab.wait(timeout=20)
            except subprocess.TimeoutExpired:
                lab.kill()
    result["total_s"] = round(time.monotonic() - started, 1)
    if own_folder:
        shutil.rmtree(folder, ignore_errors=True)
    return result


def tiny_checkpoints(folder: Path) -> tuple[Path, Path, Path]:
    """A VQ-VAE, a classifier and a prior trained in about a minute here, when no checkpoint is given or found."""
    from vqlib.classify import train_classifier
    from vqlib.config import ClassifierConfig, PriorConfig, TrainConfig, VQVAEConfig
    from vqlib.data import load_fashion_mnist
    from vqlib.prior import train_prior
    from vqlib.train import train_vqvae

    data = load_fashion_mnist()
    run = train_vqvae(
        VQVAEConfig(num_embeddings=32, embedding_dim=16, hidden_channels=32, residual_channels=16),
        TrainConfig(
            epochs=1,
            train_subset=2000,
            device="cpu",
            checkpoint_dir=str(folder / "vqvae"),
            results_dir=str(folder / "vqvae_results"),
        ),
        data,
        progress=False,
    )
    cls = train_classifier(
        ClassifierConfig(
            vqvae_checkpoint=str(run.best_checkpoint),
            labels_per_class=100,
            epochs=2,
            device="cpu",
            checkpoint_dir=str(folder / "classifier"),
            results_dir=str(folder / "classifier_results"),
        ),
        data,
        progress=False,
    )
    prior = train_prior(
        PriorConfig(
            vqvae_checkpoint=str(run.best_checkpoint),
            class_conditional=True,
            layers=2,
            heads=2,
            width=64,
            epochs=1,
            train_subset=2000,
            val_subset=500,
            device="cpu",
            checkpoint_dir=str(folder / "prior"),
        ),
        data,
        progress=False,
    )
    return run.best_checkpoint, cls.best_checkpoint, prior.best_checkpoint


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vqvae-checkpoint", default=None, help="default: the grid's best, else the published best")
    parser.add_argument("--classifier-checkpoint", default=None, help="a classifier trained on that VQ-VAE")
    parser.add_argument(
        "--prior-checkpoint", default=None, help="a prior over that VQ-VAE's code (default: a published one, if any)"
    )
    parser.add_argument("--screenshot", default=str(REPO / "docs" / "figures" / "explorer.png"))
    args = parser.parse_args(argv)
    problem = missing_requirements()
    if problem:
        print(f"explore-check: {problem}", file=sys.stderr)
        return 2
    from vqlib.checkpoints import resolve_vqvae_checkpoint
    from vqlib.errors import CheckpointError

    vqvae, classifier, prior = args.vqvae_checkpoint, args.classifier_checkpoint, args.prior_checkpoint
    with tempfile.TemporaryDirectory(prefix="vqlib-explore-ckpt-") as tmp:
        if vqvae is None:
            try:
                vqvae = str(resolve_vqvae_checkpoint(None))
            except CheckpointError:
                print(
                    "explore-check: no VQ-VAE given or found; training a tiny one, its classifier and its prior",
                    flush=True,
                )
                vqvae, classifier, prior = tiny_checkpoints(Path(tmp))
        result = run_check(vqvae, classifier, Path(args.screenshot), prior_checkpoint=prior)
    print(json.dumps(result, indent=1))
    print(f"explore-check passed in {result['total_s']} s; screenshot {result['screenshot']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
