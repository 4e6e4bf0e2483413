"""What machine this is: CPU, memory, GPUs (NVML and torch), and a short fingerprint of it.

The fingerprint names the hardware a figure was measured on; a converged run is reused only on a
machine with the same fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from importlib import metadata

import psutil

PACKAGES = (
    "torch",
    "diffusers",
    "transformers",
    "tokenizers",
    "peft",
    "accelerate",
    "torchao",
    "fa3-fwd",
    "flash_attn_3",
    "langgraph",
    "langgraph-checkpoint-sqlite",
    "libtmux",
    "pydantic",
    "nvidia-ml-py",
    "psutil",
    "imageio-ffmpeg",
)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpus() -> tuple[list[dict], str | None]:
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as err:
        return [], f"{type(err).__name__}: {err}"
    driver = pynvml.nvmlSystemGetDriverVersion()
    cuda = pynvml.nvmlSystemGetCudaDriverVersion()  # e.g. 13000: the newest CUDA this driver runs
    driver_cuda = f"{cuda // 1000}.{cuda % 1000 // 10}"
    gpus = []
    for i in range(pynvml.nvmlDeviceGetCount()):
        handle = pynvml.nvmlDeviceGetHandleByIndex(i)
        major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
        gpus.append(
            {
                "index": i,
                "name": pynvml.nvmlDeviceGetName(handle),
                "uuid": pynvml.nvmlDeviceGetUUID(handle),
                "driver": driver,
                "driver_cuda": driver_cuda,
                "memory_GiB": round(pynvml.nvmlDeviceGetMemoryInfo(handle).total / 2**30, 1),
                "compute_capability": f"{major}.{minor}",
            }
        )
    return gpus, None


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return found


def probe() -> dict:
    import torch

    gpus, nvml_error = _gpus()
    info = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "ram_GiB": round(psutil.virtual_memory().total / 2**30, 1),
        "os": platform.platform(),
        "gpus": gpus,
        "nvml": "ok" if nvml_error is None else f"unavailable: {nvml_error}",
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
    }
    identity = {k: info[k] for k in ("cpu", "cores")} | {"gpus": [(g["name"], g["memory_GiB"]) for g in gpus]}
    info["fingerprint"] = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]
    return info


def describe(info: dict) -> str:
    gpus = ", ".join(f"{g['name']} ({g['memory_GiB']} GiB, sm {g['compute_capability']})" for g in info["gpus"])
    return f"{info['cpu']} ({info['cores']} cores, {info['ram_GiB']} GiB RAM); GPU: {gpus or 'none, ' + info['nvml']}"
