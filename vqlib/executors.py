"""Where the grid's points run: a local process pool, or Ray tasks on a cluster.

The executor only places work (STYLE.md rule 15). Every point runs the same
work through the same `run_work` wherever it is placed: a VQ-VAE point
executes notebook 01_train_vqvae.ipynb (`notebooks.execute_notebook`), a prior
point (``spec["stage"] == "prior"``, `prior_grid.py`) trains the prior over
a VQ-VAE's code (`prior.train_and_record`). What differs is where files live
and how they travel back:

- `LocalExecutor`: one process per point at once, on this machine, writing
  straight into the run folders.
- `RayExecutor`: one Ray task per point. Workers share no file system with the
  driver: a task trains in a scratch folder of its own node, sends its
  checkpoints to the driver after every epoch (so a killed worker or driver
  loses at most one epoch), and returns the executed notebook, metrics and
  figures when it ends; the driver writes everything atomically into the
  usual folders. A killed worker or kernel is retried by Ray, continuing from
  the newest last.pt the driver has. A prior point's VQ-VAE file travels with
  its task.

Both hand the grid one record per point (status, error, seconds, node,
attempts); the grid's bookkeeping does not know which executor ran it.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Optional

from . import paths
from .device import cpu_cores
from .errors import ConfigError, VqlibError
from .files import atomic_path, ensure_dir, read_json, utc_timestamp, write_json
from .notebooks import TRAIN_NOTEBOOK, KernelDiedError, execute_notebook

EXECUTORS = ("local", "ray")
# Sent to the driver as they change, last.pt before best.pt: the driver then never holds
# a last.pt newer than its best.pt, so a run resumed from it keeps the true best epoch.
CHECKPOINT_FILES = ("last.pt", "best.pt", "history.json", "config.json")
RAY_INSTALL_HINT = "install it with `pip install -e '.[ray]'` (Ray 2.60.0, which does not pull another torch)"

Report = Callable[[dict], None]


# ----------------------------------------------------------------------------- placement


def choose_placement(
    points: int, jobs: Optional[int] = None, threads: Optional[int] = None, device: str = "auto"
) -> tuple[int, int]:
    """(configurations at once, torch threads each) for `points` grid points; given values are kept.

    On a CPU, one configuration per core with one thread each: these small
    convolutions scale poorly across threads, so on 2 cores two single-thread
    trainings finish 1.33x more images per second than one two-thread training
    (`make bench`, section "placement"). On CUDA, one at a time: the GPU is the
    shared resource, and the host threads only feed it.
    """
    import torch

    cores = cpu_cores()
    cuda = device != "cpu" and torch.cuda.is_available()
    if jobs is None:
        jobs = 1 if cuda else max(1, min(cores, points))
    if threads is None:
        threads = max(1, cores // jobs)
    return jobs, threads


# ----------------------------------------------------------------------------- one point


PRIOR_STAGE = "prior"


def is_prior(spec: dict) -> bool:
    return spec.get("stage") == PRIOR_STAGE


def new_record(spec: dict) -> dict:
    """The run record of one point before it runs; the executor fills in the rest."""
    parameters = spec["parameters"]
    if is_prior(spec):
        about = {"stage": PRIOR_STAGE, "vqvae_checkpoint": parameters["vqvae_checkpoint"]}
    else:
        about = {"num_embeddings": parameters["num_embeddings"], "embedding_dim": parameters["embedding_dim"]}
    record = {
        "name": spec["name"],
        **about,
        "seed": parameters["seed"],
        "status": "success",
        "error": "",
        "resumed": spec["resume"],
        "threads": spec["threads"],
        "code": paths.code_version(),
        "started": utc_timestamp(),
    }
    if not is_prior(spec):
        record["notebook"] = str(Path(spec["folder"]) / TRAIN_NOTEBOOK)
    return record


def _failure(record: dict, exc: BaseException) -> None:
    if isinstance(exc, VqlibError):
        record.update(status="failed", error=str(exc))
    else:  # one bad point must not end the grid (STYLE.md rule 6)
        record.update(status="failed", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc(limit=5))


def run_work(spec: dict, *, vqvae_file: Optional[Path] = None, keep_niceness: bool = True) -> None:
    """What one point runs, wherever it is placed: notebook 01 (a VQ-VAE), or the prior's training.

    Writes into the point's folders (``spec["folder"]``, the parameters'
    checkpoint_dir); raises on failure. A prior trains in this process with the
    point's threads (a notebook gets them through its kernel's environment).
    `keep_niceness` is `execute_notebook`'s.
    """
    if not is_prior(spec):
        execute_notebook(
            spec["notebook"],
            Path(spec["folder"]) / TRAIN_NOTEBOOK,
            {**spec["parameters"], "resume": spec["resume"]},
            cwd=spec["cwd"],
            cell_timeout=spec["cell_timeout"],
            threads=spec["threads"],
            keep_niceness=keep_niceness,
        )
        return
    import torch

    from .config import PriorConfig, from_dict
    from .prior import train_and_record

    threads = torch.get_num_threads()
    torch.set_num_threads(spec["threads"])
    try:
        train_and_record(
            from_dict(PriorConfig, spec["parameters"]), spec["folder"], resume=spec["resume"], vqvae_file=vqvae_file
        )
    finally:
        torch.set_num_threads(threads)


def execute_point(spec: dict) -> dict:
    """Run one grid point in this process's machine; never raises (a failure is recorded)."""
    record = new_record(spec)
    started = time.perf_counter()
    try:
        run_work(spec)
    except Exception as exc:
        _failure(record, exc)
    record.update(
        seconds=time.perf_counter() - started,
        finished=utc_timestamp(),
        executor="local",
        attempts=[{"node": socket.gethostname(), "pid": os.getpid()}],
    )
    return record


# ----------------------------------------------------------------------------- local


class LocalExecutor:
    """`jobs` points at once, each in its own process (and kernel) with `threads` torch threads."""

    name = "local"

    def __init__(self, jobs: int, threads: int) -> None:
        self.jobs, self.threads = jobs, threads

    def describe(self) -> str:
        return f"{self.jobs} at once with {self.threads} thread{'s' * (self.threads > 1)} each"

    def run(self, specs: list[dict], report: Report) -> None:
        if self.jobs == 1 or len(specs) == 1:
            for spec in specs:
                report(execute_point(spec))
            return
        # spawn, not fork: the parent may hold threads (tqdm, torch) that fork would copy mid-state.
        with ProcessPoolExecutor(max_workers=self.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(execute_point, spec) for spec in specs]
            for future in as_completed(futures):
                report(future.result())


# ----------------------------------------------------------------------------- Ray


def import_ray():
    """Ray, or a one-sentence error that says how to install it."""
    try:
        import ray
    except ImportError:
        raise ConfigError(f"--executor ray needs Ray, which is not installed; {RAY_INSTALL_HINT}") from None
    return ray


class ArtifactChannel:
    """A small Ray actor between the tasks and the driver.

    Tasks put their checkpoint files after every epoch; the driver drains them
    and writes them to its folders. The newest checkpoint files of each point
    stay here too, so a retried task (its worker was killed) continues from
    the last finished epoch without any shared disk. It also counts attempts.
    """

    def __init__(self) -> None:
        self.pending: list[tuple[str, str, bytes]] = []
        self.latest: dict[str, dict[str, bytes]] = {}
        self.attempts: dict[str, list[dict]] = {}

    def seed(self, name: str, files: dict[str, bytes]) -> None:
        self.latest[name] = dict(files)

    def begin(self, name: str, node: str, pid: int) -> dict[str, bytes]:
        self.attempts.setdefault(name, []).append({"node": node, "pid": pid})
        return self.latest.get(name, {})

    def note(self, name: str, **values: Any) -> None:
        self.attempts[name][-1].update(values)

    def put(self, name: str, relpath: str, data: bytes) -> None:
        self.latest.setdefault(name, {})[relpath] = data
        self.pending.append((name, relpath, data))

    def drain(self) -> list[tuple[str, str, bytes]]:
        out, self.pending = self.pending, []
        return out

    def attempts_of(self, name: str) -> list[dict]:
        return self.attempts.get(name, [])


def _read_files(folder: Path) -> dict[str, bytes]:
    """Every file under `folder`, by path relative to it (temporary and hidden files left out)."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.startswith(".")
    }


def _write_files(folder: Path, files: dict[str, bytes]) -> None:
    for relpath, data in files.items():
        target = folder / relpath
        if folder.resolve() not in target.resolve().parents:
            raise VqlibError(f"a task sent a file outside its folder ({relpath!r}); refusing to write it")
        ensure_dir(target.parent)
        with atomic_path(target) as tmp:
            tmp.write_bytes(data)


class _CheckpointSender(threading.Thread):
    """Sends each checkpoint file to the channel when it changes (atomic writes: always a whole file)."""

    def __init__(self, channel, name: str, folder: Path, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.channel, self.name, self.folder, self.interval = channel, name, folder, interval
        self.seen: dict[str, tuple[int, int]] = {}
        self.stopping = threading.Event()

    def send_changes(self) -> None:
        for relpath in CHECKPOINT_FILES:
            path = self.folder / relpath
            try:
                stat = path.stat()
                if self.seen.get(relpath) == (stat.st_mtime_ns, stat.st_size):
                    continue
                data = path.read_bytes()
            except FileNotFoundError:
                continue
            self.seen[relpath] = (stat.st_mtime_ns, stat.st_size)
            self.channel.put.remote(self.name, relpath, data)

    def run(self) -> None:
        while not self.stopping.wait(self.interval):
            self.send_changes()

    def stop(self) -> None:
        self.stopping.set()
        self.join()
        self.send_changes()


def ray_point(spec: dict, notebook_text: Optional[str], channel, vqvae_bytes: Optional[bytes] = None) -> dict:
    """One grid point as a Ray task, in a scratch folder of the worker's own node.

    Returns the record and the run's files; checkpoints also travel to the
    driver after every epoch (`_CheckpointSender`). A dead kernel raises
    `KernelDiedError`, which Ray retries like a dead worker. A prior point
    gets the notebook text None and its VQ-VAE's file as `vqvae_bytes`.
    """
    import ray

    from .checkpoints import load_checkpoint

    name = spec["name"]
    node = ray.get_runtime_context().get_node_id()
    files = ray.get(channel.begin.remote(name, node, os.getpid()))
    work = paths.results_dir() / ".ray-work"
    # An attempt whose worker was killed left its scratch folder behind; Ray runs one attempt
    # of a point at a time, so every older folder of this point is dead.
    for stale in work.glob(f"{name}-*"):
        shutil.rmtree(stale, ignore_errors=True)
    scratch = ensure_dir(work / f"{name}-{uuid.uuid4().hex[:8]}")
    checkpoints, results = ensure_dir(scratch / "checkpoints"), ensure_dir(scratch / "results")
    try:
        _write_files(checkpoints, files)
        resume = (checkpoints / "last.pt").is_file()
        resumed_from = load_checkpoint(checkpoints / "last.pt")["epoch"] if resume else 0
        channel.note.remote(name, resumed_from_epoch=resumed_from)
        local = {**spec, "cwd": str(scratch), "folder": str(results), "resume": resume}
        vqvae_file = None
        if is_prior(spec):
            local["parameters"] = {**spec["parameters"], "checkpoint_dir": str(checkpoints)}
            if vqvae_bytes is not None:
                vqvae_file = ensure_dir(scratch / "vqvae") / "best.pt"
                vqvae_file.write_bytes(vqvae_bytes)
        else:
            notebook = scratch / TRAIN_NOTEBOOK
            notebook.write_text(notebook_text, encoding="utf-8")
            local["notebook"] = str(notebook)
            local["parameters"] = {
                **spec["parameters"],
                "checkpoint_dir": str(checkpoints),
                "results_dir": str(results),
            }
        sender = _CheckpointSender(channel, name, checkpoints)
        sender.start()
        record = new_record(local)
        started = time.perf_counter()
        try:
            # Ray runs its workers at niceness 15 (its worker_niceness), below its own daemons in their session;
            # a kernel in a session of its own at 15 would yield to every other session on the node instead.
            run_work(local, vqvae_file=vqvae_file, keep_niceness=False)
        except KernelDiedError:
            raise  # Ray retries the task; the next attempt continues from the newest last.pt
        except Exception as exc:
            _failure(record, exc)
        finally:
            sender.stop()
        record.update(seconds=time.perf_counter() - started, finished=utc_timestamp(), node=node, resumed=resume)
        return {"record": record, "results": _read_files(results), "checkpoints": _read_files(checkpoints)}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


class RayExecutor:
    """Each point as one Ray task with `cpus` CPUs (its torch threads) and `gpus` GPUs (fractions share one)."""

    name = "ray"

    def __init__(
        self,
        address: Optional[str] = None,
        *,
        cpus: int = 1,
        gpus: float = 0.0,
        worker_root: Optional[str] = None,
        max_retries: int = 3,
        poll_seconds: float = 1.0,
    ) -> None:
        if cpus < 1:
            raise ConfigError(f"--cpus-per-config must be at least 1, not {cpus}")
        if gpus < 0:
            raise ConfigError(f"--gpus-per-config must be 0 or more, not {gpus}")
        self.ray = import_ray()
        self.address, self.cpus, self.gpus = address, cpus, gpus
        self.threads = cpus  # each task's kernel runs torch with as many threads as it has CPUs
        self.worker_root, self.max_retries, self.poll_seconds = worker_root, max_retries, poll_seconds

    def describe(self) -> str:
        where = f"the Ray cluster at {self.address}" if self.address else "a local Ray"
        gpus = f", {self.gpus:g} GPU" if self.gpus else ""
        return f"as Ray tasks on {where}, {self.cpus} CPU{'s' * (self.cpus > 1)}{gpus} each"

    def _connect(self) -> bool:
        """Join the cluster (or start a local Ray); True when this call started the connection."""
        ray = self.ray
        if ray.is_initialized():
            return False
        env = {"TQDM_DISABLE": "1"}
        if self.worker_root:
            env["VQLIB_ROOT"] = str(self.worker_root)
        for attempt in (1, 2):
            try:
                ray.init(
                    address=self.address,
                    runtime_env={"env_vars": env},
                    include_dashboard=False,
                    log_to_driver=False,
                    logging_level="ERROR",
                    configure_logging=True,
                )
                break
            except Exception as exc:  # noqa: BLE001 - Ray raises plain Exception for a node that did not start
                ray.shutdown()
                # A busy machine can make a new local node miss Ray's fixed 15 s wait for its
                # agents (ray-project/ray#65983): one more try usually starts.
                if attempt == 2 or self.address:
                    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                    where = f"the Ray cluster at {self.address}" if self.address else "a local Ray"
                    raise VqlibError(f"could not start or reach {where}: {first}") from None
        return True

    def run(self, specs: list[dict], report: Report) -> None:
        ray = self.ray
        started_here = self._connect()
        try:
            self._run(specs, report)
        finally:
            if started_here:
                ray.shutdown()

    def _run(self, specs: list[dict], report: Report) -> None:
        ray = self.ray
        channel = ray.remote(num_cpus=0)(ArtifactChannel).remote()
        task = ray.remote(ray_point)
        by_name = {spec["name"]: spec for spec in specs}
        # Every VQ-VAE point runs the same notebook: read it once, send its text with each task.
        notebooks = {spec["notebook"] for spec in specs if not is_prior(spec)}
        texts = {path: Path(path).read_text(encoding="utf-8") for path in notebooks}
        refs = {}
        for spec in specs:
            folder = Path(spec["parameters"]["checkpoint_dir"])
            if spec["resume"]:  # the driver's checkpoints travel to whichever worker continues the point
                ray.get(
                    channel.seed.remote(
                        spec["name"], {f: (folder / f).read_bytes() for f in CHECKPOINT_FILES if (folder / f).is_file()}
                    )
                )
            ref = task.options(
                num_cpus=self.cpus,
                num_gpus=self.gpus,
                max_retries=self.max_retries,
                retry_exceptions=[KernelDiedError],
                name=f"vqlib {spec['name']}",
            ).remote(spec, texts.get(spec.get("notebook")), channel, _vqvae_bytes(spec))
            refs[ref] = spec["name"]

        def drain() -> None:
            for name, relpath, data in ray.get(channel.drain.remote()):
                _write_files(Path(by_name[name]["parameters"]["checkpoint_dir"]), {relpath: data})

        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=self.poll_seconds)
            drain()
            for ref in ready:
                name = refs[ref]
                report(self._collect(ref, by_name[name], channel))
        drain()

    def _collect(self, ref, spec: dict, channel) -> dict:
        """The driver's side of a finished task: its files written into the usual folders, its record."""
        ray = self.ray
        record = new_record(spec)
        try:
            out = ray.get(ref)
        except ray.exceptions.RayError as exc:  # retries exhausted: the error of the last attempt
            cause = getattr(exc, "cause", None)
            text = str(cause) if isinstance(cause, VqlibError) else str(exc).strip().splitlines()[-1]
            record.update(status="failed", error=f"the Ray task failed after its retries: {text}")
        else:
            checkpoints, folder = Path(spec["parameters"]["checkpoint_dir"]), Path(spec["folder"])
            _write_files(checkpoints, out["checkpoints"])
            _write_files(folder, out["results"])
            metrics = folder / "metrics.json"
            if metrics.is_file():  # the task recorded its own scratch path; this is where best.pt is now
                values = read_json(metrics)
                values["checkpoint"] = str((checkpoints / "best.pt").resolve())
                write_json(metrics, values)
            record.update({k: v for k, v in out["record"].items() if k not in ("notebook",)})
        record.update(executor="ray", attempts=ray.get(channel.attempts_of.remote(spec["name"])))
        record.setdefault("seconds", float("nan"))
        record.setdefault("finished", utc_timestamp())
        return record


def _vqvae_bytes(spec: dict) -> Optional[bytes]:
    """A prior point's VQ-VAE file, read on the driver to travel with its task (None for a VQ-VAE point).

    Even a published one travels: a worker with another VQLIB_ROOT has no
    checkpoints/pretrained/ of its own. None when it cannot be read here: the
    task then fails to load it and records why, as a local run would.
    """
    if not is_prior(spec):
        return None
    from .checkpoints import resolve_vqvae_checkpoint

    try:
        return resolve_vqvae_checkpoint(spec["parameters"]["vqvae_checkpoint"]).read_bytes()
    except (OSError, VqlibError):
        return None


def make_executor(
    name: str,
    *,
    jobs: int,
    threads: int,
    ray_address: Optional[str] = None,
    cpus_per_config: Optional[int] = None,
    gpus_per_config: float = 0.0,
    ray_worker_root: Optional[str] = None,
):
    """The executor called `name`; Ray's CPUs per configuration default to the local placement's threads."""
    if name == "local":
        return LocalExecutor(jobs, threads)
    if name == "ray":
        return RayExecutor(
            ray_address, cpus=cpus_per_config or threads, gpus=gpus_per_config, worker_root=ray_worker_root
        )
    raise ConfigError(f"executor must be one of {', '.join(EXECUTORS)}, not {name!r}")
