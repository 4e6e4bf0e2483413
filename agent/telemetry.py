"""Telemetry sampled while a trial runs: NVML for the GPU, psutil for CPU and the worker's memory.

Written to ``telemetry.csv`` as it goes, summarised at the end. Without NVML (no GPU, no driver) the
GPU columns are empty and the summary says why; a figure that was not measured is absent, never zero.
Energy comes from the NVML energy counter's delta, not from integrating power samples.
"""

from __future__ import annotations

import csv
import functools
import logging
import operator
import os
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil

logger = logging.getLogger(__name__)

COLUMNS = [
    "t_s",
    "power_W",
    "energy_J",
    "gpu_mem_used_GiB",
    "gpu_util_pct",
    "mem_util_pct",
    "sm_clock_MHz",
    "temperature_C",
    "throttle_reasons",
    "cpu_pct",
    "worker_rss_GiB",
    "ram_used_GiB",
    "gpu_other_processes",
]


# NVML's clocks-event ("throttle") reason bits (nvmlClocksEventReason*), in the words nvidia-smi -q uses.
THROTTLE_REASONS = {0x1: "GPU idle", 0x2: "applications clocks setting", 0x4: "SW power cap", 0x8: "HW slowdown",
                    0x10: "sync boost", 0x20: "SW thermal slowdown", 0x40: "HW thermal slowdown",
                    0x80: "HW power brake slowdown", 0x100: "display clock setting"}  # fmt: skip


def throttle_shares(masks: list[int]) -> dict[str, float]:
    """The share of samples during which each clocks-event reason held (reasons never seen are left out)."""
    if not masks:
        return {}
    shares = {name: sum(1 for m in masks if m & bit) / len(masks) for bit, name in THROTTLE_REASONS.items()}
    return {name: share for name, share in shares.items() if share > 0}


def watched_whole(summary: dict) -> bool:
    """Whether the agent's sampler covered the whole trial: not re-attached midway ("partial"), not read back
    after the trial ended unwatched ("note")."""
    return not ({"partial", "note"} & summary.keys())


class Nvml:
    """One GPU through nvidia-ml-py, by NVML index or UUID ("GPU-..."); ``error`` says why it is unavailable."""

    def __init__(self, device: int | str | None = 0):
        self.handle = None
        self.error: str | None = None
        self._energy0_mJ: int | None = None
        try:
            import pynvml

            pynvml.nvmlInit()
            if device is None:
                raise LookupError("no whole GPU to watch (CUDA_VISIBLE_DEVICES hides them, or names MIG instances)")
            if isinstance(device, str):
                self.handle = pynvml.nvmlDeviceGetHandleByUUID(device)
            else:
                self.handle = pynvml.nvmlDeviceGetHandleByIndex(device)
            self.nvml = pynvml
        except Exception as err:  # ImportError, NVMLError_LibraryNotFound, NVMLError_DriverNotLoaded, ...
            self.error = f"{type(err).__name__}: {err}"

    def _read(self, getter: Callable, *args):
        try:
            return getter(self.handle, *args)
        except Exception:  # NVMLError_NotSupported and friends: that field stays unmeasured
            return None

    def sample(self) -> dict:
        if self.handle is None:
            return {}
        n = self.nvml
        row: dict = {}
        power_mW = self._read(n.nvmlDeviceGetPowerUsage)
        if power_mW is not None:
            row["power_W"] = power_mW / 1000
        energy_mJ = self._read(n.nvmlDeviceGetTotalEnergyConsumption)
        if energy_mJ is not None:
            self._energy0_mJ = energy_mJ if self._energy0_mJ is None else self._energy0_mJ
            row["energy_J"] = (energy_mJ - self._energy0_mJ) / 1000
        memory = self._read(n.nvmlDeviceGetMemoryInfo)
        if memory is not None:
            row["gpu_mem_used_GiB"] = memory.used / 2**30
        util = self._read(n.nvmlDeviceGetUtilizationRates)
        if util is not None:
            row["gpu_util_pct"], row["mem_util_pct"] = util.gpu, util.memory
        row["sm_clock_MHz"] = self._read(n.nvmlDeviceGetClockInfo, n.NVML_CLOCK_SM)
        row["temperature_C"] = self._read(n.nvmlDeviceGetTemperature, n.NVML_TEMPERATURE_GPU)
        row["throttle_reasons"] = self._read(n.nvmlDeviceGetCurrentClocksEventReasons)
        return {k: v for k, v in row.items() if v is not None}

    def processes(self) -> list[dict] | None:
        """Processes holding memory on this GPU ({"pid", "name", "used_GiB"}), or None when NVML cannot say."""
        if self.handle is None:
            return None
        found: dict[int, dict] = {}
        for getter in (self.nvml.nvmlDeviceGetComputeRunningProcesses, self.nvml.nvmlDeviceGetGraphicsRunningProcesses):
            for proc in self._read(getter) or []:
                try:
                    name = psutil.Process(proc.pid).name()
                except psutil.Error:  # another container's process, or gone
                    name = "?"
                used = proc.usedGpuMemory / 2**30 if isinstance(proc.usedGpuMemory, int) else None
                found[proc.pid] = {"pid": proc.pid, "name": name, "used_GiB": used}
        return list(found.values())


def process_tree(pid: int | None) -> list[psutil.Process]:
    """The process ``pid`` and its descendants (empty when there is none)."""
    if pid is None:
        return []
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def _rss_GiB(tree: list[psutil.Process]) -> float | None:
    try:
        return sum(p.memory_info().rss for p in tree) / 2**30 if tree else None
    except psutil.Error:  # a process of the tree ended meanwhile
        return None


class SharingWatch:
    """Run inside the worker: which other processes held its GPU while it ran. The agent's sampler sees only
    the part of a trial it watched (not what happened while the agent was down); this record covers it all."""

    def __init__(self, gpu: int | str | None = 0, interval_s: float = 1.0):
        self.nvml, self.interval_s = Nvml(gpu), interval_s
        self.others: dict[int, dict] = {}
        self.samples = self.shared_samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="gpu-sharing", daemon=True)

    def start(self) -> SharingWatch:
        self._thread.start()
        return self

    def _loop(self) -> None:
        while True:
            found = self.nvml.processes()
            if found is not None:
                mine = {p.pid for p in process_tree(os.getpid())}
                others = [p for p in found if p["pid"] not in mine]
                self.samples += 1
                self.shared_samples += bool(others)
                self.others |= {p["pid"]: p for p in others}
            if self._stop.wait(self.interval_s):
                return

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        if self.nvml.error:
            return {"checked": False, "why": f"NVML unavailable: {self.nvml.error}"}
        others = list(self.others.values())
        return {"checked": True, "samples": self.samples, "shared_samples": self.shared_samples, "others": others}


def combine(samples: list[dict]) -> dict:
    """One row for several GPUs a trial computes on: power and energy summed, memory and temperature the highest
    GPU's (what limits the trial), utilisation and clocks averaged, throttle reasons the union of each GPU's."""
    row: dict = {}
    for key, how in (("power_W", sum), ("energy_J", sum), ("gpu_mem_used_GiB", max), ("temperature_C", max),
                     ("gpu_util_pct", statistics.fmean), ("mem_util_pct", statistics.fmean),
                     ("sm_clock_MHz", statistics.fmean)):  # fmt: skip
        found = [s[key] for s in samples if s.get(key) is not None]
        if found and len(found) == len(samples):  # a figure some GPU did not give is not the trial's: left out
            row[key] = how(found)
    masks = [s["throttle_reasons"] for s in samples if s.get("throttle_reasons") is not None]
    if masks and len(masks) == len(samples):
        row["throttle_reasons"] = functools.reduce(operator.or_, masks)
    return row


class NvmlGroup:
    """The GPUs of a trial over several ranks, watched as one (``combine``); ``error`` if any cannot be watched."""

    def __init__(self, devices: list[int | str]):
        self.members = [Nvml(d) for d in devices]
        errors = [f"GPU {d}: {m.error}" for d, m in zip(devices, self.members, strict=True) if m.error]
        self.error: str | None = "; ".join(errors) or None

    def sample(self) -> dict:
        return combine([m.sample() for m in self.members]) if self.error is None else {}

    def processes(self) -> list[dict] | None:
        found = [m.processes() for m in self.members]
        if any(f is None for f in found):
            return None
        return list({p["pid"]: p for f in found for p in f or []}.values())


class Sampler:
    """Samples in a background thread from ``start()`` to ``stop()``; ``worker_pid`` gives the process tree to watch.
    ``gpu``: the NVML index (or UUID) of the GPU the trial computes on, or the list of them for a trial over ranks."""

    def __init__(self, csv_path: Path, worker_pid: Callable[[], int | None], interval_s: float = 0.5,
                 gpu: int | str | list[int] | None = 0):  # fmt: skip
        self.csv_path, self.worker_pid, self.interval_s = csv_path, worker_pid, interval_s
        self.nvml: Nvml | NvmlGroup = NvmlGroup(list(gpu)) if isinstance(gpu, list) else Nvml(gpu)
        self.rows: list[dict] = []
        self.write_error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="telemetry", daemon=True)

    def start(self) -> Sampler:
        if self.nvml.error:
            logger.info("NVML unavailable (%s): recording CPU and RAM only", self.nvml.error)
        psutil.cpu_percent()  # primes the counter; the first real reading covers one interval
        self._thread.start()
        return self

    def stop(self) -> dict:
        self._stop.set()
        if self._thread.ident is not None:  # an interrupt may come before it started
            self._thread.join()
        return self.summary()

    def _loop(self) -> None:
        t0, written = time.monotonic(), 0
        while not self._stop.wait(self.interval_s):
            worker = process_tree(self.worker_pid())  # once per sample: finding the pane's pid asks tmux
            row = {
                "t_s": round(time.monotonic() - t0, 3),
                **self.nvml.sample(),
                "cpu_pct": psutil.cpu_percent(),
                "worker_rss_GiB": _rss_GiB(worker),
                "ram_used_GiB": psutil.virtual_memory().used / 2**30,
            }
            others = self.nvml.processes()
            if others is not None:  # a process on the GPU that is not the worker's makes the figures shared
                row["gpu_other_processes"] = len({p["pid"] for p in others} - {p.pid for p in worker})
            self.rows.append(row)
            written = self._append_csv(written)

    def _append_csv(self, written: int) -> int:
        """Append the rows not yet in the CSV; a disk that refuses is noted once, and sampling goes on in memory."""
        if self.write_error:
            return written
        try:
            new_file = not self.csv_path.exists()
            with open(self.csv_path, "a", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=COLUMNS)
                if new_file:
                    writer.writeheader()
                writer.writerows(self.rows[written:])
            return len(self.rows)
        except OSError as err:
            self.write_error = f"{self.csv_path.name} not written past row {written}: {err.strerror}"
            return written

    def summary(self) -> dict:
        """Means and peaks of what was measured; keys for what was not measured are left out."""

        def values(key: str) -> list[float]:
            return [r[key] for r in self.rows if r.get(key) is not None]

        out: dict = {"nvml": "ok" if self.nvml.error is None else f"unavailable: {self.nvml.error}", "samples": len(self.rows)}
        for key, stat, name in (
            ("power_W", statistics.fmean, "mean_power_W"),
            ("power_W", max, "peak_power_W"),
            ("energy_J", max, "energy_J"),
            ("gpu_mem_used_GiB", max, "peak_gpu_mem_used_GiB"),
            ("gpu_util_pct", statistics.fmean, "mean_gpu_util_pct"),
            ("sm_clock_MHz", statistics.fmean, "mean_sm_clock_MHz"),
            ("temperature_C", max, "peak_temperature_C"),
            ("cpu_pct", statistics.fmean, "mean_cpu_pct"),
            ("worker_rss_GiB", max, "peak_worker_rss_GiB"),
            ("gpu_other_processes", max, "max_gpu_other_processes"),
        ):
            found = values(key)
            if found:
                out[name] = stat(found)
        reasons = values("throttle_reasons")
        if reasons:  # {} when NVML read the reasons and none held: measured, and nothing throttled
            out["throttle_reasons"] = throttle_shares([int(m) for m in reasons])
        if self.write_error:
            out["write_error"] = self.write_error
        return out
