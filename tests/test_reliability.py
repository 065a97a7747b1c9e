"""Resume after a kill, atomic writes, refusal of bad checkpoints, and NaN handling."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from vqlib.checkpoints import load_checkpoint, load_vqvae, save_checkpoint
from vqlib.config import TrainConfig, VQVAEConfig
from vqlib.errors import CheckpointError, OutputError, TrainingError
from vqlib.files import atomic_path, ensure_dir, write_json
from vqlib.train import train_vqvae

from .conftest import VQLIB

# What a history records about the machine, not about the training: speed, memory, load, the code version.
TIMING = {"epoch_seconds", "images_per_s", "rss_mb", "peak_rss_mb", "load_avg"}
TRAIN_ARGS = [
    "train-vqvae",
    "--num-embeddings",
    "25",
    "--embedding-dim",
    "16",
    "--hidden-channels",
    "32",
    "--residual-channels",
    "16",
    "--num-residual-blocks",
    "1",
    "--batch-size",
    "32",
    "--train-subset",
    "2000",
    "--epochs",
    "4",
    "--seed",
    "7",
]


def _strip_timing(history):
    return [{k: v for k, v in row.items() if k not in TIMING} for row in history]


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_resume_after_sigkill_mid_epoch_matches_an_uninterrupted_run(schedule, tmp_path, cli_env):
    """On CPU the resumed run is bitwise equal: the shuffling depends on (seed, epoch),
    and last.pt restores weights, Adam's moments, batch-norm buffers, the EMA
    codebook statistics and the RNG states; the cosine schedule's rate is a function of the step."""
    full, killed = tmp_path / "full", tmp_path / "killed"
    args = TRAIN_ARGS + ["--lr-schedule", schedule]
    subprocess.run(VQLIB + args + ["--checkpoint-dir", str(full)], env=cli_env, check=True, capture_output=True)

    assert (
        1 <= _kill_after_first_epoch(VQLIB + args + ["--checkpoint-dir", str(killed)], killed / "last.pt", cli_env) < 4
    )

    subprocess.run(
        VQLIB + args + ["--checkpoint-dir", str(killed), "--resume"], env=cli_env, check=True, capture_output=True
    )
    a, b = load_checkpoint(full / "last.pt"), load_checkpoint(killed / "last.pt")
    assert a["epoch"] == b["epoch"] == 4
    assert _strip_timing(a["history"]) == _strip_timing(b["history"])
    for name, tensor in a["state_dict"].items():
        assert torch.equal(tensor, b["state_dict"][name]), name


def _kill_after_first_epoch(args, last, env):
    """Start `args`, SIGKILL it inside its second epoch (after last.pt first appears); return last.pt's epoch."""
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    started = time.time()
    while not last.exists():  # epoch 1 is done once last.pt appears
        assert proc.poll() is None and time.time() < started + 600, "training ended before it could be killed"
        time.sleep(0.02)
    epoch_seconds = time.time() - started  # an upper bound of one epoch, start-up included
    time.sleep(min(0.5, epoch_seconds / 4))  # inside epoch 2 on a fast or a busy machine
    assert proc.poll() is None, "training ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return load_checkpoint(last)["epoch"]


def _tiny_vqvae(data, folder):
    """A VQ-VAE of one epoch on 640 real images in `folder` (seconds): what the classifiers below read."""
    train_vqvae(
        VQVAEConfig(
            num_embeddings=25, embedding_dim=16, hidden_channels=16, residual_channels=8, num_residual_blocks=1
        ),
        TrainConfig(epochs=1, batch_size=64, train_subset=640, checkpoint_dir=str(folder)),
        data,
        progress=False,
    )
    return folder


def test_classifier_resume_after_sigkill_matches_an_uninterrupted_run(data, tmp_path, cli_env):
    """train-cls --resume: last.pt holds the head, AdamW's moments, the cosine schedule,
    the best state so far and the RNG states (dropout); on CPU the result is bitwise equal.

    In one thread: on an Intel Xeon with AVX-512 (2026-12-06), two 2-thread runs of the same command
    differed in the last bits of epoch 1 from one process to the next (3 different results in 7
    runs, no resume involved), while one-thread runs were identical; within one process the head's
    steps repeat bitwise. Resume cannot be more exact than the run it continues."""
    cli_env = {**cli_env, "OMP_NUM_THREADS": "1"}
    vqvae = _tiny_vqvae(data, tmp_path / "vqvae")
    args = VQLIB + [
        "train-cls",
        "--vqvae-checkpoint",
        str(vqvae / "best.pt"),
        "--labels-per-class",
        "100",
        "--epochs",
        "4",
        "--patience",
        "4",
        "--min-steps-per-epoch",
        "300",
        "--batch-size",
        "64",
        "--seed",
        "3",
    ]
    full, killed = tmp_path / "full", tmp_path / "killed"
    subprocess.run(args + ["--checkpoint-dir", str(full)], env=cli_env, check=True, capture_output=True)
    assert 1 <= _kill_after_first_epoch(args + ["--checkpoint-dir", str(killed)], killed / "last.pt", cli_env) < 4
    assert not (killed / "best.pt").exists()  # best.pt is written when training ends

    subprocess.run(args + ["--checkpoint-dir", str(killed), "--resume"], env=cli_env, check=True, capture_output=True)
    for name in ("last.pt", "best.pt"):
        a, b = load_checkpoint(full / name, kind="classifier"), load_checkpoint(killed / name, kind="classifier")
        assert a["epoch"] == b["epoch"] and len(a["history"]) == 4
        assert _strip_timing(a["history"]) == _strip_timing(b["history"])
        for key, tensor in a["state_dict"].items():
            assert torch.equal(tensor, b["state_dict"][key]), (name, key)

    # Other settings, or another VQ-VAE under the same path, are refused.
    other = subprocess.run(
        args[:-2] + ["--seed", "4", "--checkpoint-dir", str(killed), "--resume"],
        env=cli_env,
        capture_output=True,
        text=True,
    )
    assert other.returncode == 2 and "other settings ({'seed': 3})" in other.stderr
    ckpt = load_checkpoint(vqvae / "best.pt")
    ckpt["state_dict"]["quantizer.codebook"] += 1.0
    save_checkpoint(vqvae / "best.pt", "vqvae", {k: v for k, v in ckpt.items() if k not in ("kind", "format_version")})
    moved = subprocess.run(
        args + ["--checkpoint-dir", str(killed), "--resume"], env=cli_env, capture_output=True, text=True
    )
    assert moved.returncode == 2 and "as it was then" in moved.stderr


def test_a_killed_network_row_of_label_efficiency_goes_on_from_its_last_epoch(data, tmp_path, cli_env):
    """label-efficiency keeps each network row's last epoch (RESULTS/.unfinished/) until the row is recorded: killed
    inside the row and run again, it continues there, and the row is that of an uninterrupted run (one thread, as
    above); a file of other settings is not continued; on a fresh clone, the epoch `vqlib publish` snapshotted is
    restored and continued."""
    cli_env = {**cli_env, "OMP_NUM_THREADS": "1"}
    vqvae = _tiny_vqvae(data, tmp_path / "vqvae")
    args = VQLIB + [
        "label-efficiency", "--vqvae-checkpoint", str(vqvae / "best.pt"), "--label-counts", "20", "--num-seeds", "1",
        "--methods", "vq_head", "--epochs", "4", "--patience", "4", "--min-steps-per-epoch", "300",
        "--batch-size", "64", "--device", "cpu",
    ]  # fmt: skip

    def row(folder):
        (line,) = (folder / "label_efficiency.runs.jsonl").read_text().splitlines()
        return json.loads(line)["row"]

    def without_time(r):
        return {k: v for k, v in r.items() if k != "seconds"}

    def mark(path, **config):
        """The saved epoch, with a time spent no run reaches (it shows whether a run continued the file)."""
        saved = load_checkpoint(path, kind="label_efficiency_row")
        saved["model_config"]["fingerprint"]["head"].update(config)
        payload = {k: v for k, v in saved.items() if k not in ("kind", "format_version")}
        save_checkpoint(path, "label_efficiency_row", {**payload, "seconds": 1e6})

    def clone(machine, study):
        """`vqlib publish` on `machine`, then a fresh clone of its tracked snapshots restored: the study's folder there."""
        run = dict(env=cli_env, check=True, capture_output=True, text=True)
        published = subprocess.run(VQLIB + ["publish"], **{**run, "env": {**cli_env, "VQLIB_ROOT": str(machine)}})
        assert "1 under way (vq_head_20pc_s0.pt)" in published.stdout
        fresh = tmp_path / "fresh"
        shutil.copytree(machine / "checkpoints" / "inprogress", fresh / "checkpoints" / "inprogress")
        restored = subprocess.run(
            VQLIB + ["publish", "--restore"], **{**run, "env": {**cli_env, "VQLIB_ROOT": str(fresh)}}
        )
        assert f"restored the label-efficiency study of {study.name}" in restored.stdout
        return fresh / study.relative_to(machine)

    full = tmp_path / "full"
    subprocess.run(args + ["--results-dir", str(full)], env=cli_env, check=True, capture_output=True)
    assert row(full)["stopped_epoch"] == 4 and not (full / ".unfinished").exists()
    for name, config, continued in (("same", {}, True), ("other", {"patience": 2}, False), ("clone", {}, True)):
        # "clone": killed on one machine and continued on a fresh clone, from the snapshot `vqlib publish` took.
        folder = tmp_path / name / "results" / "classifier" / "K25_D16_all_frozen"
        unfinished = folder / ".unfinished" / "vq_head_20pc_s0.pt"
        assert 1 <= _kill_after_first_epoch(args + ["--results-dir", str(folder)], unfinished, cli_env) < 4
        assert not (folder / "label_efficiency.runs.jsonl").exists()
        mark(unfinished, **config)
        if name == "clone":
            folder = clone(tmp_path / name, folder)
            unfinished = folder / ".unfinished" / "vq_head_20pc_s0.pt"
            assert unfinished.is_file()
        subprocess.run(args + ["--results-dir", str(folder)], env=cli_env, check=True, capture_output=True)
        assert without_time(row(folder)) == without_time(row(full)), name
        assert (row(folder)["seconds"] >= 1e6) is continued, name
        assert not unfinished.parent.exists(), name


def test_resume_refuses_another_configuration(data, tmp_path):
    config = TrainConfig(epochs=1, batch_size=64, train_subset=320, checkpoint_dir=str(tmp_path))
    small = dict(hidden_channels=16, residual_channels=8, num_residual_blocks=1)
    train_vqvae(VQVAEConfig(num_embeddings=25, embedding_dim=16, **small), config, data, progress=False)
    with pytest.raises(CheckpointError, match="another model configuration"):
        train_vqvae(
            VQVAEConfig(num_embeddings=50, embedding_dim=16, **small), config, data, resume=True, progress=False
        )
    with pytest.raises(CheckpointError, match="other settings"):
        train_vqvae(
            VQVAEConfig(num_embeddings=25, embedding_dim=16, **small),
            dataclasses.replace(config, learning_rate=1e-4),
            data,
            resume=True,
            progress=False,
        )


def test_cosine_schedule_decays_to_zero_and_keeps_its_epochs_on_resume(data, tmp_path):
    """The rate falls every epoch towards 0 at the run's last step; a resumed cosine run may not change its
    epochs (its schedule would be another one), while a constant one may (more epochs, the same rates)."""
    small = VQVAEConfig(
        num_embeddings=25, embedding_dim=16, hidden_channels=16, residual_channels=8, num_residual_blocks=1
    )
    config = TrainConfig(epochs=2, batch_size=64, train_subset=320, checkpoint_dir=str(tmp_path), lr_schedule="cosine")
    run = train_vqvae(small, config, data, progress=False)
    rates = [row["learning_rate"] for row in run.history]
    steps = 2 * 5  # 320 images in batches of 64, twice
    assert rates[0] == pytest.approx(0.002 * 0.5 * (1 + math.cos(math.pi * 4 / steps)))
    assert rates[1] == pytest.approx(0.002 * 0.5 * (1 + math.cos(math.pi * 9 / steps))) and rates[1] < 0.0001
    with pytest.raises(CheckpointError, match="resume it with epochs=2"):
        train_vqvae(small, dataclasses.replace(config, epochs=3), data, resume=True, progress=False)


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(data, tmp_path):
    small = VQVAEConfig(
        num_embeddings=25, embedding_dim=16, hidden_channels=16, residual_channels=8, num_residual_blocks=1
    )
    config = TrainConfig(epochs=1, batch_size=64, train_subset=320, checkpoint_dir=str(tmp_path))
    train_vqvae(small, config, data, progress=False)
    last = tmp_path / "last.pt"
    ckpt = load_checkpoint(last)
    ckpt["state_dict"]["encoder.net.0.weight"].fill_(float("nan"))  # a diverged model, resumed
    save_checkpoint(last, "vqvae", {k: v for k, v in ckpt.items() if k not in ("kind", "format_version")})
    before = last.read_bytes()
    with pytest.raises(TrainingError, match="loss became .*lower the learning rate"):
        train_vqvae(small, dataclasses.replace(config, epochs=2), data, resume=True, progress=False)
    assert last.read_bytes() == before


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))  # a pickle that creates a file when loaded


def test_a_pickle_that_would_run_code_is_refused_and_does_not_run(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"kind": "vqvae", "format_version": 1, "model_config": {}, "state_dict": _RunsCode(str(marker))}, evil)
    with pytest.raises(CheckpointError, match="not a vqlib checkpoint: it holds Python objects") as err:
        load_vqvae(evil)
    assert "weights_only=False" not in str(err.value) and "set to `False`" not in str(err.value)
    assert not marker.exists()
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps(_RunsCode(str(marker))))
    with pytest.raises(CheckpointError):
        load_checkpoint(plain)
    assert not marker.exists()


def test_wrong_files_are_refused_with_one_sentence(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(CheckpointError, match="is not a (readable|vqlib) checkpoint"):
        load_checkpoint(junk)
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="lacks the keys"):
        load_checkpoint(tmp_path / "foreign.pt")
    config = VQVAEConfig(num_embeddings=25, embedding_dim=16)
    save_checkpoint(tmp_path / "cls.pt", "classifier", {"model_config": dataclasses.asdict(config), "state_dict": {}})
    with pytest.raises(CheckpointError, match="is a classifier checkpoint, but a vqvae checkpoint is needed"):
        load_vqvae(tmp_path / "cls.pt")
    save_checkpoint(tmp_path / "k25.pt", "vqvae", {"model_config": dataclasses.asdict(config), "state_dict": {}})
    with pytest.raises(CheckpointError, match="num_embeddings=25, but num_embeddings=50 is needed"):
        load_checkpoint(tmp_path / "k25.pt", kind="vqvae", expect={"num_embeddings": 50})


def test_an_interrupted_write_leaves_the_old_file(tmp_path):
    target = tmp_path / "metrics.json"
    write_json(target, {"version": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text('{"version": 2, "half')
            raise RuntimeError("crash in the middle of a write")
    assert target.read_text().strip().endswith("}") and '"version": 1' in target.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_atomic_writes_get_the_usual_file_mode(tmp_path):
    """Not mkstemp's private 0600: a report written for sharing is as readable as any new file."""
    old = os.umask(0o022)
    try:
        mode = write_json(tmp_path / "shared.json", {}).stat().st_mode & 0o777
    finally:
        os.umask(old)
    assert mode == 0o644


def test_a_killed_writer_never_leaves_a_half_written_checkpoint(tmp_path):
    """SIGKILL a process that rewrites a ~40 MB checkpoint in a loop: the target always loads."""
    target = tmp_path / "big.pt"
    script = (
        "import torch, sys\n"
        "from vqlib.checkpoints import save_checkpoint\n"
        "i = 0\n"
        "while True:\n"
        "    print(i, flush=True)\n"
        "    save_checkpoint(sys.argv[1], 'vqvae', {'model_config': {'i': i}, 'state_dict': {'w': torch.full((10_000_000,), float(i))}})\n"
        "    i += 1\n"
    )
    for writes, delay in ((2, 0.0), (1, 0.05), (3, 0.11)):
        proc = subprocess.Popen([sys.executable, "-c", script, str(target)], stdout=subprocess.PIPE, text=True)
        for _ in range(writes):  # wait for the writer's start-up, however slow the machine, then kill mid-write
            assert proc.stdout.readline(), "the writer ended"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        ckpt = load_checkpoint(target)
        assert torch.all(ckpt["state_dict"]["w"] == ckpt["model_config"]["i"])
    assert target.exists()
    # What the killed writers left half-written is removed by the next write; a living writer's file stays.
    with subprocess.Popen(["true"]) as dead:
        pass
    (tmp_path / f".big.pt.{dead.pid}.dead.tmp").write_bytes(b"x")
    with subprocess.Popen(["sleep", "60"]) as alive:
        in_progress = tmp_path / f".big.pt.{alive.pid}.abcd.tmp"
        in_progress.write_bytes(b"x")
        save_checkpoint(target, "vqvae", {"model_config": {}, "state_dict": {}})
        assert [p.name for p in tmp_path.glob(".big.pt.*.tmp")] == [in_progress.name]
        alive.kill()


def test_an_unwritable_output_folder_is_a_clear_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(OutputError, match="cannot create the output folder"):
        ensure_dir(blocker / "sub")
    with pytest.raises(OutputError):
        write_json(blocker / "sub" / "x.json", {})
