"""Does this environment fit this machine? The torch build against the driver and the GPUs' architectures, FP8
compute where the GPUs have it, what start_wan.sh could not install, and a tiny real call on each GPU.

Each problem is a sentence that says what will not work and how to fix it; provision records them in run.json and
the journal, so that a bring-up's failure is a line to read before any trial, never a crash in one.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SKIPPED_FILE = Path(__file__).resolve().parent.parent.parent / ".venv" / ".wan-agent-skipped"  # start_wan.sh's
FP8_COMPUTE_CAPABILITY = 8.9


def _version(text: str | None) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".")[:2]) if text else ()


def problems(hardware: dict, versions: dict, arch_list: list[str], skipped: list[str]) -> list[str]:
    """What this environment cannot do on this hardware (``arch_list``: torch.cuda.get_arch_list())."""
    gpus, torch_cuda = hardware.get("gpus", []), hardware.get("torch_cuda")
    found = [f"not installed: {line}" for line in skipped]
    if not gpus:
        return found
    if torch_cuda is None:
        found.append(
            f"torch {versions.get('torch')} is a CPU build on a machine with {len(gpus)} NVIDIA GPU(s): every trial would "
            "run on the CPU; install torch's CUDA build (https://pytorch.org/get-started/locally/), then rerun"
        )
        return found
    driver_cuda = gpus[0].get("driver_cuda")
    if driver_cuda and _version(driver_cuda) < _version(torch_cuda):
        found.append(
            f"torch {versions.get('torch')} is built for CUDA {torch_cuda}, but driver {gpus[0].get('driver')} supports "
            f"CUDA {driver_cuda} at most: upgrade the driver, or install the torch build for CUDA {driver_cuda}"
        )
    for gpu in gpus:
        major, minor = _version(gpu["compute_capability"])
        native = f"sm_{major}{minor}"
        ptx = [a for a in arch_list if a.startswith("compute_") and int(a.removeprefix("compute_")) <= major * 10 + minor]
        if arch_list and native not in arch_list and not ptx:
            found.append(f"torch has no kernels for {gpu['name']} ({native}); it was built for {', '.join(arch_list)}")
    best = max(float(g["compute_capability"]) for g in gpus)
    if best >= FP8_COMPUTE_CAPABILITY and "torchao" not in versions:
        found.append(
            f"torchao is not installed although the GPU (compute capability {best}) computes in FP8: the fp8 rungs "
            "fall back to FP8 storage; `./start_wan.sh --install-only` installs it (or `pip install -e '.[fp8]'`)"
        )
    if any(_version(g["compute_capability"])[0] == 9 for g in gpus) and not {"fa3-fwd", "flash_attn_3"} & set(versions):
        found.append(
            "no FlashAttention-3 is installed although a GPU is Hopper: the fa3-attention and fp8-attention rungs fail "
            "their probe; `./start_wan.sh --install-only` installs it (or `pip install -e '.[hopper]'`)"
        )
    return found


def skipped_installs(path: Path = SKIPPED_FILE) -> list[str]:
    try:
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except OSError:
        return []


def kernel_problems(hardware: dict) -> list[str]:
    """A tiny matmul and attention on each GPU, in a process of its own (this one must hold no CUDA context: trials
    treat any other process on their GPU as sharing it): 'no kernel image is available' and friends show up here."""
    if not hardware.get("gpus"):
        return []
    done = subprocess.run([sys.executable, "-m", "agent.provision.kernels"], capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        return [f"torch could not start on the GPUs: {(done.stderr.strip().splitlines() or ['?'])[-1][:300]}"]
    return json.loads(done.stdout)
