import csv
import os
import time

from agent.telemetry import Sampler


def test_without_nvml_figures_are_absent_not_zero(tmp_path):
    sampler = Sampler(tmp_path / "telemetry.csv", lambda: os.getpid(), interval_s=0.05).start()
    time.sleep(0.4)
    summary = sampler.stop()
    if summary["nvml"] != "ok":  # the CPU machines: NVML missing, and the summary says so
        assert summary["nvml"].startswith("unavailable: ")
        for key in ("energy_J", "mean_power_W", "peak_power_W", "peak_gpu_mem_used_GiB", "mean_gpu_util_pct"):
            assert key not in summary
    assert summary["samples"] >= 3
    assert summary["peak_worker_rss_GiB"] > 0
    rows = list(csv.DictReader(open(tmp_path / "telemetry.csv")))
    assert len(rows) == summary["samples"]
    assert float(rows[-1]["worker_rss_GiB"]) > 0


def test_a_vanished_worker_is_not_an_error(tmp_path):
    sampler = Sampler(tmp_path / "t.csv", lambda: None, interval_s=0.05).start()
    time.sleep(0.2)
    assert "peak_worker_rss_GiB" not in sampler.stop()
