"""Executing notebooks with papermill: the project's kernel, plain parameters, one-sentence failures.

Papermill always gets the project's kernel by name (`KERNEL_NAME`, registered
inside the virtual environment by the Makefile), an explicit working folder,
and plain parameter values only. Every stage that runs a notebook (the grid's
executors, the study) calls `execute_notebook`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .errors import ConfigError, VqlibError
from .files import ensure_dir

# The Jupyter kernel papermill runs every notebook in: `python -m ipykernel install
# --sys-prefix --name vqlib` inside the project's virtual environment (the Makefile does it).
KERNEL_NAME = "vqlib"
TRAIN_NOTEBOOK = "01_train_vqvae.ipynb"
SUMMARY_NOTEBOOK = "02_grid_summary.ipynb"
CLASSIFIER_NOTEBOOK = "03_classifier.ipynb"
ANALYSIS_NOTEBOOK = "04_latent_analysis.ipynb"
PRIOR_NOTEBOOK = "06_prior.ipynb"

# The figures notebooks 02 and 04 save beside their results (tests/test_notebooks.py checks them);
# notebook 03's label_efficiency.png is written by vqlib.label_efficiency.
SUMMARY_FIGURES = ("loss_curves.png", "heatmaps.png")
ANALYSIS_FIGURES = (
    "tsne.png",
    "code_usage_per_class.png",
    "code_patches.png",
    "code_specificity.png",
    "reconstructions_per_class.png",
    "per_class_mse.png",
    "per_class_claim.png",
    "interpolations.png",
    "interpolation_claim.png",
)
ANALYSIS_FILE = "analysis.json"
# Notebook 06's figures and record, beside its executed copy (results/prior/ unless told otherwise).
PRIOR_FIGURES = (
    "position_bits.png",
    "samples_per_class.png",
    "completions.png",
    "frechet.png",
    "class_accuracy.png",
    "nearest_distances.png",
    "nearest_pairs.png",
)
GENERATION_FILE = "generation.json"
LABEL_EFFICIENCY_FIGURE = "label_efficiency.png"


class NotebookError(VqlibError):
    """A notebook could not be executed to its end."""


class KernelDiedError(NotebookError):
    """The kernel died under the notebook (killed, out of memory): a retry may succeed where a cell error would not."""


def plain_parameters(values: dict[str, Any]) -> dict[str, Any]:
    """Parameters papermill can write as literals: numpy numbers cast, paths as str, tuples as lists."""

    def plain(name: str, value: Any) -> Any:
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        if isinstance(value, (list, tuple)):
            return [plain(name, v) for v in value]
        if isinstance(value, dict):
            return {str(k): plain(name, v) for k, v in value.items()}
        raise ConfigError(
            f"notebook parameter {name} is a {type(value).__name__}; only numbers, strings, "
            "lists, dicts and None can be passed to a notebook"
        )

    return {name: plain(name, value) for name, value in values.items()}


def check_kernel(kernel_name: str = KERNEL_NAME) -> None:
    """Fail early, in one sentence, when the project's kernel is not installed."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec(kernel_name)
    except NoSuchKernel:
        raise NotebookError(
            f"the Jupyter kernel {kernel_name!r} is not installed; run `make run` (it registers it) or "
            f"`.venv/bin/python -m ipykernel install --sys-prefix --name {kernel_name}`"
        ) from None


@contextlib.contextmanager
def _kernel_environment(threads: Optional[int] = None) -> Iterator[None]:
    """The environment the kernel papermill starts inherits from this process: quiet, and `threads` threads.

    Progress bars inside an executed notebook end up as pages of text in the
    HTML reports; tqdm >= 4.66 reads TQDM_DISABLE when a bar is created. Torch
    reads OMP_NUM_THREADS when the kernel imports it, so this is how a grid
    point gets its share of the cores.
    """
    values = {"TQDM_DISABLE": "1"}
    if threads:
        values |= {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def match_autogroup_niceness() -> None:
    """Give this process's scheduling autogroup its own niceness (Linux; elsewhere nothing happens).

    Linux with autogroup scheduling (`kernel.sched_autogroup_enabled = 1`, the default of most
    distributions) shares the CPU between sessions before processes, and Jupyter starts every
    kernel in a session of its own, whose group runs at niceness 0: without this, `nice -n 10
    vqlib grid` would lower the priority of the idle parent only, and its kernels would take as
    much of the CPU as the foreground. The kernels `execute_notebook` starts from a niced process
    call this at start-up.
    """
    try:
        niceness = os.nice(0)
        if niceness > 0:
            with open("/proc/self/autogroup", "w") as f:
                f.write(str(niceness))
    except OSError:  # no autogroups here (another OS, or a kernel without them), or not allowed
        pass


def _kernel_arguments(keep_niceness: bool = True) -> list[str]:
    """The kernel's command-line options: quiet start-up, and with `keep_niceness` this process's niceness for the
    kernel's session (`match_autogroup_niceness`)."""
    # The kernel's start-up warnings (TCP without encryption on loopback) would print once per grid point.
    arguments = ["--IPKernelApp.log_level=ERROR"]
    if keep_niceness and os.path.isfile("/proc/self/autogroup") and os.nice(0) > 0:
        # Run before the first cell, leaving no name in the notebook's namespace.
        arguments.append("--IPKernelApp.exec_lines=__import__('vqlib.notebooks').notebooks.match_autogroup_niceness()")
    return arguments


def notebook_parameter_names(notebook: str | os.PathLike) -> list[str]:
    """Names in the cell tagged `parameters` (papermill's own reading of it)."""
    import papermill

    return list(papermill.inspect_notebook(str(notebook)))


def execute_notebook(
    notebook: str | os.PathLike,
    output: str | os.PathLike,
    parameters: dict[str, Any],
    *,
    cwd: Optional[str | os.PathLike] = None,
    cell_timeout: Optional[int] = None,
    threads: Optional[int] = None,
    keep_niceness: bool = True,
) -> Path:
    """Execute `notebook` with papermill into `output`; raise `NotebookError` with one sentence on failure.

    With `keep_niceness`, a kernel started from a niced process runs its session at that niceness
    (`match_autogroup_niceness`).

    The notebook is written next to `output` under a temporary name and moved
    into place when execution ends, successful or not: a failed notebook is
    kept, because its last cell shows the error.
    """
    import papermill
    from nbclient.exceptions import CellTimeoutError, DeadKernelError
    from papermill.exceptions import PapermillException, PapermillExecutionError

    notebook, output = Path(notebook), Path(output)
    if not notebook.is_file():
        raise NotebookError(f"no notebook at {notebook}")
    ensure_dir(output.parent)
    partial = output.with_name(f".{output.stem}.running.ipynb")
    error: Optional[str] = None
    failure: type[NotebookError] = NotebookError
    try:
        with _kernel_environment(threads):
            papermill.execute_notebook(
                str(notebook),
                str(partial),
                parameters=plain_parameters(parameters),
                kernel_name=KERNEL_NAME,
                cwd=str(cwd or notebook.parent),
                progress_bar=False,
                log_output=False,
                execution_timeout=cell_timeout,
                extra_arguments=_kernel_arguments(keep_niceness),
            )
    except PapermillExecutionError as exc:
        error = f"cell {exc.exec_count} raised {exc.ename}: {exc.evalue}"
    except CellTimeoutError:
        error = f"a cell ran longer than the cell timeout of {cell_timeout} s"
    except DeadKernelError:
        error, failure = "the kernel died during execution (killed, or out of memory?)", KernelDiedError
    except PapermillException as exc:
        error = f"papermill could not run it: {exc}"
    except RuntimeError as exc:  # nbclient: the kernel did not start or respond
        error = f"the kernel failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
    if partial.is_file():
        os.replace(partial, output)
    if error is not None:
        raise failure(f"{notebook.name} failed: {error} (executed notebook: {output})")
    return output
