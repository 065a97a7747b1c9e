"""The grid on a real two-node Ray cluster, inside a private network namespace.

Each test cluster is a head and a second node started with `ray start` on this
machine, inside a network namespace of its own (`unshare --net`, loopback up),
so every Ray address is 127.0.0.1 and no traffic reaches the machine's own
interface. Ray 2.60 clusters use token authentication: the head, the node and
the driver share one random token. The driver (`vqlib grid --executor ray`)
runs in the same namespace through `nsenter`.

Checked here: outputs travel to the driver with no shared folder (the workers
have another VQLIB_ROOT); tasks run on both nodes; a SIGKILLed worker is
retried and continues from its last finished epoch; a SIGKILLed driver, run
again, reuses finished points and continues the interrupted one; prior points
(`vqlib prior-grid`) train on VQ-VAE files that only the driver can see.
"""

from __future__ import annotations

import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest

from vqlib.files import read_json

BIN = Path(sys.executable).parent
EPOCHS = 4
# A small model on few images: a few seconds per epoch on one thread, so that a kill
# lands between epochs of a run that is still going.
GRID_ARGS = [
    "--num-embeddings-values", "8", "--embedding-dim-values", "4", "--hidden-channels", "16",
    "--residual-channels", "8", "--epochs", str(EPOCHS), "--train-subset", "3000",
]  # fmt: skip

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 and not os.environ.get("CI"),
    reason="a private network namespace (unshare --net) needs root; CI runs these tests as root",
)


def agent_ports(first: int) -> list[str]:
    """Fixed ports for a node's agents. With ports left to Ray, a raylet waits at most 15 s for its
    agents to report theirs and dies when the machine is busy (ray-project/ray#65983); the
    namespace is private, so fixed ports cannot collide with anything outside it."""
    names = ("--dashboard-agent-grpc-port", "--dashboard-agent-listen-port", "--metrics-export-port",
             "--runtime-env-agent-port")  # fmt: skip
    return [arg for i, name in enumerate(names) for arg in (name, str(first + i))]


class Cluster:
    """A namespace holder process, and a Ray head plus one node inside its network namespace."""

    def __init__(self, root: Path) -> None:
        self.root = root
        # Short: Ray's socket paths live under its temp dir and must stay under ~100 characters.
        self.temp = Path(tempfile.mkdtemp(prefix="vqray-", dir="/tmp"))
        self.port = 6380 + secrets.randbelow(500)
        self.env = dict(
            os.environ,
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN=secrets.token_hex(32),
            TQDM_DISABLE="1",
            PYTHONUNBUFFERED="1",
            RAY_USAGE_STATS_ENABLED="0",
        )
        self.holder = subprocess.Popen(["unshare", "--net", "bash", "-c", "ip link set lo up && exec sleep infinity"])
        deadline = time.time() + 10
        while "UP" not in self._ns(["ip", "-brief", "link", "show", "lo"], check=False).stdout:
            assert time.time() < deadline, "the network namespace's loopback did not come up"
            time.sleep(0.1)
        common = ["--num-cpus", "1", "--node-ip-address", "127.0.0.1", "--disable-usage-stats"]
        try:
            self._ns([str(BIN / "ray"), "start", "--head", "--port", str(self.port), "--temp-dir", str(self.temp),
                      "--include-dashboard=false", *common, *agent_ports(self.port + 1)])  # fmt: skip
            self._ns([str(BIN / "ray"), "start", "--address", self.address, *common, *agent_ports(self.port + 11)])
        except BaseException:
            self.stop()  # a node that did not start must not leave the head and the namespace running
            raise

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _ns(self, command: list[str], *, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
        """Run `command` inside the cluster's network namespace."""
        result = subprocess.run(
            ["nsenter", "-t", str(self.holder.pid), "-n", *command],
            env=self.env, capture_output=True, text=True, timeout=180, **kwargs,
        )  # fmt: skip
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(command[:3])} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
        return result

    def grid_command(self, driver_root: Path, worker_root: Path, *extra: str) -> list[str]:
        return [
            "nsenter", "-t", str(self.holder.pid), "-n", str(BIN / "vqlib"), "grid", "--executor", "ray",
            "--ray-address", self.address, "--ray-worker-root", str(worker_root), *GRID_ARGS, *extra,
        ]  # fmt: skip

    def driver_env(self, driver_root: Path) -> dict:
        return dict(self.env, VQLIB_ROOT=str(driver_root))

    def _members(self) -> list[int]:
        """The processes in the cluster's network namespace: its Ray nodes and workers (the holder aside)."""
        own = os.readlink(f"/proc/{self.holder.pid}/ns/net")
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit() and int(entry) not in (self.holder.pid, os.getpid()):
                try:
                    if os.readlink(f"/proc/{entry}/ns/net") == own:
                        found.append(int(entry))
                except OSError:  # ended meanwhile, or not ours to read
                    pass
        return found

    def stop(self) -> None:
        # This cluster's processes by their ids, found by its namespace: `ray stop` would end every
        # Ray process of the machine, other checkouts' test clusters too.
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in self._members():
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.time() + 10
            while self._members() and time.time() < deadline:
                time.sleep(0.2)
        self.holder.kill()
        self.holder.wait()
        shutil.rmtree(self.temp, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if shutil.which("unshare") is None or shutil.which("nsenter") is None:
        pytest.fail("unshare and nsenter (util-linux) are needed for the Ray tests")
    c = Cluster(tmp_path_factory.mktemp("ray"))
    yield c
    c.stop()


def _wait_for(condition, timeout: float, what: str, poll: float = 0.2) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(poll)


def _epoch_of(last: Path) -> int:
    from vqlib.checkpoints import load_checkpoint

    try:
        return load_checkpoint(last)["epoch"] if last.is_file() else 0
    except Exception:  # noqa: BLE001 - mid-replace on a slow disk: try again at the next poll
        return 0


def _pids(pattern: str) -> list[int]:
    found = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()
    return [int(p) for p in found if int(p) != os.getpid()]


def _assert_complete(driver_root: Path, names: list[str]) -> dict[str, dict]:
    """Every point succeeded and its files are in the driver's folders, whole; returns the run records."""
    records = {}
    for name in names:
        results = driver_root / "results" / "grid" / name
        checkpoints = driver_root / "checkpoints" / "grid" / name
        for path in (results / "01_train_vqvae.ipynb", results / "metrics.json", results / "loss_curves.png",
                     results / "reconstructions.png", checkpoints / "best.pt", checkpoints / "last.pt"):  # fmt: skip
            assert path.is_file() and path.stat().st_size > 0, f"{path} is missing on the driver"
        metrics = read_json(results / "metrics.json")
        assert metrics["status"] == "success"
        assert Path(metrics["checkpoint"]) == (checkpoints / "best.pt").resolve()
        assert [row["epoch"] for row in metrics["history"]] == list(range(1, EPOCHS + 1))
        records[name] = read_json(results / "run.json")
        assert records[name]["status"] == "success" and records[name]["executor"] == "ray"
    leftovers = [p for p in driver_root.rglob("*") if p.name.startswith(".") and p.is_file()]
    assert not leftovers, f"half-written files left on the driver: {leftovers}"
    return records


def test_outputs_travel_to_the_driver_and_a_killed_worker_is_retried(cluster, tmp_path):
    driver_root, worker_root = tmp_path / "driver", tmp_path / "worker"
    driver_root.mkdir()
    names = ["K8_D4", "K8_D4_s1"]
    driver = subprocess.Popen(
        cluster.grid_command(driver_root, worker_root, "--seeds", "0,1"),
        env=cluster.driver_env(driver_root), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    victim = driver_root / "checkpoints" / "grid" / "K8_D4_s1" / "last.pt"
    # The first finished epoch of K8_D4_s1 has reached the driver: kill the worker that trains it.
    _wait_for(lambda: _epoch_of(victim) >= 1 or driver.poll() is not None, 240, "the first epoch on the driver")
    assert driver.poll() is None, f"the grid ended before the kill:\n{driver.stdout.read()}"
    workers = _pids("ray::vqlib K8_D4_s1")
    assert workers, "no Ray worker runs K8_D4_s1"
    killed_at = _epoch_of(victim)
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    output, _ = driver.communicate(timeout=300)
    assert driver.returncode == 0, output

    records = _assert_complete(driver_root, names)
    attempts = records["K8_D4_s1"]["attempts"]
    assert len(attempts) == 2, attempts
    # At most one epoch lost: the retry started from the epoch the driver held at the kill, or a later one.
    assert attempts[1]["resumed_from_epoch"] >= killed_at >= 1
    assert len(records["K8_D4"]["attempts"]) == 1
    # Both nodes worked: each single-CPU node took one of the two points at the start.
    nodes = {a["node"] for r in records.values() for a in r["attempts"]}
    assert len(nodes) == 2, nodes
    # Nothing was written on the driver's side by the workers: their scratch space is their own root.
    assert (worker_root / "results" / ".ray-work").is_dir()
    assert not (driver_root / "results" / ".ray-work").exists()
    summary = pd.read_csv(driver_root / "results" / "grid" / "summary.csv")
    assert list(summary["name"]) == names and (summary["status"] == "success").all()


def test_a_killed_driver_run_again_reuses_and_resumes(cluster, tmp_path):
    driver_root, worker_root = tmp_path / "driver", tmp_path / "worker"
    driver_root.mkdir()
    names = ["K8_D4", "K8_D4_s1", "K8_D4_s2"]
    command = cluster.grid_command(driver_root, worker_root, "--seeds", "0,1,2")
    env = cluster.driver_env(driver_root)
    driver = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    grid = driver_root / "results" / "grid"
    done = lambda: [n for n in names if (grid / n / "metrics.json").is_file()]  # noqa: E731
    # Two points run at once on the two nodes; the third starts when one of them is done.
    third = lambda: next((n for n in names if n not in done() and _epoch_of(  # noqa: E731
        driver_root / "checkpoints" / "grid" / n / "last.pt") >= 1 and len(done()) >= 1), None)  # fmt: skip
    _wait_for(lambda: third() is not None or driver.poll() is not None, 300, "a finished and an interrupted point")
    assert driver.poll() is None, f"the grid ended before the kill:\n{driver.stdout.read()}"
    interrupted, finished = third(), done()
    os.kill(driver.pid, signal.SIGKILL)  # nsenter execs the driver: this is the driver itself
    driver.wait()
    epoch_at_kill = _epoch_of(driver_root / "checkpoints" / "grid" / interrupted / "last.pt")

    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=400)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "already complete, reused" in again.stdout
    records = _assert_complete(driver_root, names)
    summary = pd.read_csv(grid / "summary.csv").set_index("name")
    for name in finished:
        assert summary.loc[name, "reused"], f"{name} was finished before the kill but trained again"
    assert records[interrupted]["resumed"] is True
    assert records[interrupted]["attempts"][0]["resumed_from_epoch"] >= epoch_at_kill >= 1


PRIOR_ARGS = [
    "--layers", "1", "--heads", "2", "--width", "32", "--batch-size", "32", "--warmup-steps", "3", "--epochs", "1",
    "--train-subset", "160", "--val-subset", "40", "--device", "cpu",
]  # fmt: skip


def test_prior_points_run_as_ray_tasks_with_their_vqvae_sent(cluster, tmp_path):
    """Two priors as Ray tasks, one per node. Their VQ-VAEs exist only in the driver's own mount namespace (a
    tmpfs the workers cannot see), so the tasks can only have trained on the copies sent with them."""
    driver_root, worker_root = tmp_path / "driver", tmp_path / "worker"
    hidden = tmp_path / "driver-only"  # empty here; the driver mounts a tmpfs over it and copies the VQ-VAEs in
    driver_root.mkdir()
    hidden.mkdir()
    pretrained = Path(__file__).resolve().parents[1] / "checkpoints" / "pretrained"
    names = ["K25_D64", "K50_D64"]
    copies = " && ".join(
        f"mkdir {shlex.quote(str(hidden / n))} && cp {shlex.quote(str(pretrained / n / 'best.pt'))} "
        f"{shlex.quote(str(hidden / n / 'best.pt'))}"
        for n in names
    )
    grid = [
        str(BIN / "vqlib"), "prior-grid", "--executor", "ray", "--ray-address", cluster.address,
        "--ray-worker-root", str(worker_root), "--vqvae-checkpoints", ",".join(str(hidden / n / "best.pt") for n in names),
        *PRIOR_ARGS,
    ]  # fmt: skip
    script = f"mount -t tmpfs tmpfs {shlex.quote(str(hidden))} && {copies} && exec {shlex.join(grid)}"
    command = ["nsenter", "-t", str(cluster.holder.pid), "-n", "unshare", "--mount", "--propagation", "private"]
    run = subprocess.run(
        [*command, "bash", "-c", script], env=cluster.driver_env(driver_root), capture_output=True, text=True,
        timeout=400,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert not any(hidden.iterdir()), "the driver's VQ-VAEs leaked out of its mount namespace"
    nodes = set()
    for n in names:
        name = f"{n}_transformer_uncond"
        results = driver_root / "results" / "grid" / "prior" / name
        checkpoints = driver_root / "checkpoints" / "grid" / "prior" / name
        for path in (results / "metrics.json", results / "samples.png", results / "run.json",
                     checkpoints / "best.pt", checkpoints / "last.pt"):  # fmt: skip
            assert path.is_file() and path.stat().st_size > 0, f"{path} is missing on the driver"
        metrics, record = read_json(results / "metrics.json"), read_json(results / "run.json")
        assert metrics["status"] == "success" and metrics["num_embeddings"] == int(n[1:3])
        # Trained on the copy, recorded under the driver's name, and found by the driver where it wrote it.
        assert metrics["vqvae_checkpoint"] == str(hidden / n / "best.pt")
        assert Path(metrics["checkpoint"]) == (checkpoints / "best.pt").resolve()
        assert record["status"] == "success" and record["executor"] == "ray" and record["stage"] == "prior"
        assert len(record["attempts"]) == 1
        nodes.add(record["attempts"][0]["node"])
    assert len(nodes) == 2, nodes
    summary = pd.read_csv(driver_root / "results" / "grid" / "prior" / "summary.csv")
    assert (summary["status"] == "success").all() and (summary["executor"] == "ray").all()
    leftovers = [p for p in driver_root.rglob("*") if p.name.startswith(".") and p.is_file()]
    assert not leftovers, f"half-written files left on the driver: {leftovers}"
