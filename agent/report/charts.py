"""The report's pictures as PNG bytes: the ladder, a trial's NVML (or CPU) traces, a sheet of a trial's frames.

matplotlib draws off-screen (Agg); every figure is closed once saved, so a long run's report holds no figures open.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display: draw to memory
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

COLOURS = {"baseline": "#1f77b4", "kept": "#2ca02c", "confirmed": "#2ca02c", "reverted": "#7f7f7f",
           "inconclusive": "#bcbd22", "unconfirmed": "#bcbd22", "rejected": "#ff7f0e", "failed": "#d62728",
           "skipped": "#c7c7c7"}  # fmt: skip


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def ladder(trials: list[dict], best: str | None) -> bytes:
    """Each trial's time per clip (median, the spread of its repeats as an error bar), coloured by verdict; trials
    with no time (failed, skipped) drawn as a stub at zero so that the ladder shows every rung tried."""
    names = [t["name"] for t in trials]
    times = [t.get("generate_s") or 0.0 for t in trials]
    low = [t["generate_s"] - min(t["samples_s"]) if t.get("samples_s") else 0.0 for t in trials]
    high = [max(t["samples_s"]) - t["generate_s"] if t.get("samples_s") else 0.0 for t in trials]
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(trials) + 1.2))
    y = np.arange(len(trials))[::-1]
    ax.barh(y, times, xerr=[low, high], color=[COLOURS.get(t["verdict"], "#999999") for t in trials], capsize=3)
    for yi, t, s, h in zip(y, trials, times, high, strict=True):
        label = f"{s:.3f} s" if s else t["verdict"]
        ax.text(s + h, yi, f"  {label}{'  ★ best' if t['name'] == best else ''}", va="center", fontsize=8)
    ax.set_yticks(y, names, fontsize=8)
    ax.set_xlabel("seconds per clip (median; bars: the repeats' range)")
    ax.set_xlim(0, max([s + h for s, h in zip(times, high, strict=True)] + [1e-9]) * 1.4)
    seen = sorted({t["verdict"] for t in trials})
    ax.legend(handles=[plt.Rectangle((0, 0), 1, 1, color=COLOURS.get(v, "#999999")) for v in seen], labels=seen,
              fontsize=7, loc="lower right")  # fmt: skip
    return _png(fig)


def telemetry(csv_file: Path) -> bytes | None:
    """Power, utilisation and memory over the trial (GPU from NVML; CPU and RSS where NVML had nothing)."""
    if not csv_file.is_file():
        return None
    with open(csv_file, newline="") as f:
        rows = list(csv.DictReader(f))
    if len(rows) < 2:
        return None

    def series(name: str) -> list[float] | None:
        values = [row.get(name) for row in rows]
        return [float(v) for v in values] if all(v not in (None, "") for v in values) else None  # type: ignore[arg-type]

    t = series("t_s") or list(range(len(rows)))
    panels = [(k, label) for k, label in (("power_W", "GPU power (W)"), ("gpu_util_pct", "GPU utilisation (%)"),
                                          ("gpu_mem_used_GiB", "GPU memory (GiB)"), ("cpu_pct", "CPU (%)"),
                                          ("worker_rss_GiB", "worker RSS (GiB)")) if series(k) is not None]  # fmt: skip
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 1.3 * len(panels) + 0.4), sharex=True, squeeze=False)
    for ax, (key, label) in zip(axes[:, 0], panels, strict=True):
        ax.plot(t, series(key), linewidth=1)
        ax.set_ylabel(label, fontsize=7)
        ax.tick_params(labelsize=7)
    axes[-1, 0].set_xlabel("seconds since the trial started", fontsize=8)
    return _png(fig)


def frame_sheet(frames_file: Path, count: int = 4) -> bytes | None:
    """``count`` frames of the trial's saved clip, evenly spaced, side by side."""
    if not frames_file.is_file():
        return None
    frames = np.load(frames_file, mmap_mode="r")
    if frames.ndim != 4 or not len(frames):
        return None
    picks = np.linspace(0, len(frames) - 1, min(count, len(frames))).round().astype(int)
    strip = np.concatenate([np.asarray(frames[i], dtype=np.uint8) for i in picks], axis=1)
    buffer = io.BytesIO()
    Image.fromarray(strip).save(buffer, format="PNG")
    return buffer.getvalue()
