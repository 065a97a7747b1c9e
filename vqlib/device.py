"""Device and precision choice and reproducibility switches, shared by every training function.

Precision (fp32 or bf16) is decided here and nowhere else: `resolve_precision`
turns what a user asked for ('auto', 'fp32', 'bf16') into what runs, and
`autocast` is the one context every forward pass that may run in bf16 enters.
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
from typing import Optional

import numpy as np
import torch

from .config import PRECISIONS
from .errors import ConfigError

RESOLVED_PRECISIONS = ("fp32", "bf16")  # what runs, and what checkpoints record
# CPU features whose instructions compute in bfloat16 natively (oneDNN uses either for bf16
# matmuls and convolutions). Without them a bf16 op is emulated: 0.6 GFLOP/s against 40 in
# fp32 for a 1024^2 matmul on one thread of an AVX2 EPYC (docs/precision.md).
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' -> CUDA when available, else CPU; 'cuda' without a GPU is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for, but PyTorch sees no CUDA GPU; use device 'auto' or 'cpu'")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """All RNG states as weights_only-loadable values (tensors, lists, ints)."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [
            np_state[0],
            torch.from_numpy(np_state[1].astype(np.int64)),
            *map(int, np_state[2:4]),
            float(np_state[4]),
        ],
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def cpu_cores() -> int:
    """Cores this process may use (its affinity mask, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# ----------------------------------------------------------------------------- precision


def cpu_flags() -> Optional[set[str]]:
    """The CPU's feature flags from /proc/cpuinfo (Linux), or None where that file is not readable."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        return None
    return None


@functools.cache
def native_bf16_cpu() -> bool:
    """Whether this CPU computes bfloat16 natively: AVX-512 BF16 or AMX-BF16.

    Asked of torch's own CPU probe (`torch.cpu.get_capabilities`, cpuinfo, every
    OS); /proc/cpuinfo's flags where that probe is missing. The same machine type
    has come with and without these units, so this is detected, never assumed.
    """
    try:
        capabilities = torch.cpu.get_capabilities()
    except (AttributeError, RuntimeError):
        capabilities = None
    if isinstance(capabilities, dict) and all(flag in capabilities for flag in BF16_CPU_FLAGS):
        return any(bool(capabilities[flag]) for flag in BF16_CPU_FLAGS)
    flags = cpu_flags()
    return bool(flags and flags & set(BF16_CPU_FLAGS))


_NOTICES: set[str] = set()


def _notice(text: str) -> None:
    """Print `text` once per process (every run of a grid or a notebook would repeat it).

    On stdout, with what a command reports: stderr carries a failed command's one
    sentence, and a notice printed before it would make that two lines.
    """
    if text not in _NOTICES:
        _NOTICES.add(text)
        print(text, flush=True)


NO_BF16_UNITS = f"this CPU has no native bfloat16 units: no {' or '.join(BF16_CPU_FLAGS)}"


def resolve_precision(requested: str, device: torch.device | str, *, recorded: Optional[str] = None) -> str:
    """What runs ('fp32' or 'bf16') for what was asked ('auto', 'fp32' or 'bf16') on `device`.

    'auto' is bf16 on CUDA (as amp's 'auto' always was) and on a CPU with native
    bf16 units (`native_bf16_cpu`), fp32 on any other CPU, which says so in one
    line. An explicit 'bf16' on a CPU without those units is honoured, with a
    one-line warning that it is emulated and slow.

    `recorded` is the precision of the run being resumed: 'auto' then keeps it
    (a run keeps one precision for life), and an explicit other precision is a
    ConfigError, because the continued run would mix two precisions silently.
    """
    if requested not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, not {requested!r}")
    device = torch.device(device)
    if recorded is not None:
        if requested not in ("auto", recorded):
            raise ConfigError(
                f"the run was trained in {recorded} and cannot continue in {requested}; resume with precision "
                f"{recorded} or auto (which keeps the run's own), or start a new run in another folder"
            )
        precision = recorded
    elif requested == "auto":
        if device.type == "cuda" or native_bf16_cpu():
            precision = "bf16"
        else:
            precision = "fp32"
            if device.type == "cpu":
                _notice(f"precision: fp32 ({NO_BF16_UNITS})")
    else:
        precision = requested
    if precision == "bf16" and device.type == "cpu" and not native_bf16_cpu():
        _notice(f"precision: bf16 as asked, but {NO_BF16_UNITS}: it is emulated and runs many times slower than fp32")
    return precision


def autocast(precision: str, device: torch.device | str) -> contextlib.AbstractContextManager:
    """The forward pass's context: bf16 autocast when `precision` is 'bf16', else a no-op.

    Weights, gradients and Adam state stay fp32 (autocast casts copies for the
    matmuls and convolutions only). The quantizer's distances and EMA statistics
    stay fp32 under it (`VectorQuantizer.nearest` turns autocast off), and the
    callers compute losses and metrics from `.float()` outputs. The same code
    path runs on CPU and CUDA (device_type comes from the device).
    """
    if precision not in RESOLVED_PRECISIONS:
        raise ConfigError(f"precision must be resolved to fp32 or bf16 first, not {precision!r}")
    device = torch.device(device)
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
