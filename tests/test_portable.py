"""No tracked file carries a path of the machine that made it: text files, and the published checkpoints' configs."""

from __future__ import annotations

import re
import subprocess

import pytest

from vqlib.checkpoints import load_checkpoint
from vqlib.publish import portable_text, portable_vqvae_payload

from .conftest import REPO

# Absolute paths of a machine's own folders, where a path starts (not inside a URL such as github.com/home/...).
MACHINE_PATH = re.compile(r"(?<![\w.:/-])/(?:work|tmp|root|home|Users)/[\w.-]")


def tracked_files() -> list[str]:
    out = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z"], capture_output=True, text=True, check=True)
    return [name for name in out.stdout.split("\0") if name]


def machine_paths(text: str) -> list[str]:
    """Each line of `text` that holds a machine path, shortened around it."""
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        match = MACHINE_PATH.search(line)
        if match:
            found.append(f"line {number}: ...{line[max(match.start() - 30, 0) : match.end() + 40].strip()}...")
    return found


def test_the_scan_finds_a_machine_path():
    work, tmp = "/wo" + "rk", "/t" + "mp"  # split, so that this file passes its own scan
    assert machine_paths(f'x = "{work}/study/checkpoints/grid"\nok https://github.com/home/x\n{tmp}/y') == [
        f'line 1: ...x = "{work}/study/checkpoints/grid"...',
        f"line 3: ...{tmp}/y...",
    ]
    assert machine_paths("checkpoints/grid/K100_D64 and pretrained:K100_D64, /usr/share/datasets") == []


def test_no_tracked_text_file_holds_a_machine_path():
    offenders = {}
    for name in tracked_files():
        path = REPO / name
        if not path.is_file():
            continue  # deleted in the working tree, not yet in git
        data = path.read_bytes()
        if b"\0" in data[:8192]:
            continue  # binary: the checkpoints are read below, as checkpoints
        found = machine_paths(data.decode("utf-8", errors="replace"))
        if found:
            offenders[name] = found[:2]
    assert not offenders, f"machine paths in tracked files: {offenders}"


def _strings(value, where: str = ""):
    """(where, string) for every string inside nested dicts and lists."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(item, f"{where}.{key}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _strings(item, f"{where}[{i}]")
    elif isinstance(value, str):
        yield where, value


@pytest.mark.parametrize("name", sorted(p.parent.name for p in (REPO / "checkpoints" / "pretrained").glob("*/best.pt")))
def test_published_checkpoints_name_no_folder_of_a_machine(name):
    ckpt = load_checkpoint(REPO / "checkpoints" / "pretrained" / name / "best.pt")
    absolute = [
        f"{where}={text}"
        for where, text in _strings({k: v for k, v in ckpt.items() if k != "state_dict"})
        if text.startswith("/") or MACHINE_PATH.search(text)
    ]
    assert not absolute, f"{name}/best.pt names {absolute}"


def test_portable_text_and_payload():
    root = "/srv/study"
    text = (
        'checkpoint_dir = "/srv/study/checkpoints/grid/K8_D4"\n'
        "VQ-VAE: /srv/study/checkpoints/grid/K8_D4/best.pt\n"
        "in /srv/study: 1 run; /srv/study2/x stays\n"
    )
    renames = {"/srv/study/checkpoints/grid/K8_D4/best.pt": "pretrained:K8_D4"}
    assert portable_text(text, renames, root) == (
        'checkpoint_dir = "checkpoints/grid/K8_D4"\nVQ-VAE: pretrained:K8_D4\nin .: 1 run; /srv/study2/x stays\n'
    )
    ckpt = {
        "kind": "vqvae",
        "format_version": 1,
        "state_dict": {},
        "train_config": {"checkpoint_dir": "/a", "results_dir": "/b", "epochs": 3},
    }
    payload = portable_vqvae_payload(ckpt)
    assert payload["train_config"] == {"checkpoint_dir": None, "results_dir": None, "epochs": 3}
    assert "kind" not in payload and ckpt["train_config"]["checkpoint_dir"] == "/a"  # the input is left alone


def test_a_run_of_another_clone_is_published_without_its_paths(tmp_path):
    """A study that ran in a worktree of its own, published from this clone: the other clone's paths go too."""
    from vqlib.publish import _Writer, source_project_root

    clone = tmp_path / "study"
    (clone / "vqlib").mkdir(parents=True)
    (clone / "pyproject.toml").write_text("[project]\nname = 'vqlib'\n")
    run = clone / "results" / "protocol_seeds" / "grid" / "K8_D4_s1"
    run.mkdir(parents=True)
    notebook = run / "01_train_vqvae.ipynb"
    notebook.write_text(f'{{"checkpoint_dir": "{clone}/checkpoints/protocol_seeds/K8_D4_s1", "cwd": "{clone}"}}')
    assert source_project_root(notebook) == clone.resolve()
    target = tmp_path / "published" / notebook.name
    _Writer().text(notebook, target)
    text = target.read_text()
    assert str(tmp_path) not in text and MACHINE_PATH.search(text) is None
    assert text == '{"checkpoint_dir": "checkpoints/protocol_seeds/K8_D4_s1", "cwd": "."}'
