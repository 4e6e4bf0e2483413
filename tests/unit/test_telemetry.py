import csv
import os
import time

from agent.telemetry import Sampler, SharingWatch


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


def test_the_worker_without_nvml_says_sharing_was_not_checked():
    record = SharingWatch(interval_s=0.05).start().stop()
    if record["checked"]:  # a GPU machine: this process is never its own "other"
        assert os.getpid() not in {p["pid"] for p in record["others"]} and record["samples"] >= 1
    else:
        assert record["why"].startswith("NVML unavailable: ")


def test_sharing_is_read_from_the_agents_samples_and_the_workers_record():
    from agent.nodes.trial import _shared_during

    assert _shared_during({"telemetry": {"max_gpu_other_processes": 0}, "result": {"gpu_sharing": {"others": []}}}) is None
    watched = _shared_during({"telemetry": {"max_gpu_other_processes": 2}, "result": None})
    assert watched == "2 other process(es) on the GPU while the agent watched"
    unwatched = {"telemetry": {"note": "trial finished while the agent was not watching"}}
    unwatched["result"] = {"gpu_sharing": {"others": [{"pid": 7, "name": "python3", "used_GiB": 1.5}]}}
    assert _shared_during(unwatched) == "the worker saw pid 7 (python3, 1.5 GiB)"


def test_several_gpus_are_watched_as_one_trial():
    from agent.telemetry import combine

    a = {"power_W": 300.0, "energy_J": 10.0, "gpu_mem_used_GiB": 40.0, "temperature_C": 60, "gpu_util_pct": 100,
         "sm_clock_MHz": 1980, "throttle_reasons": 0x4}  # fmt: skip
    b = {"power_W": 250.0, "energy_J": 8.0, "gpu_mem_used_GiB": 42.0, "temperature_C": 65, "gpu_util_pct": 80,
         "sm_clock_MHz": 1800, "throttle_reasons": 0x40}  # fmt: skip
    row = combine([a, b])
    assert row["power_W"] == 550.0 and row["energy_J"] == 18.0  # the trial's power and energy: both GPUs'
    assert row["gpu_mem_used_GiB"] == 42.0 and row["temperature_C"] == 65  # the GPU that limits it
    assert row["gpu_util_pct"] == 90 and row["sm_clock_MHz"] == 1890 and row["throttle_reasons"] == 0x44
    assert "power_W" not in combine([a, {k: v for k, v in b.items() if k != "power_W"}])  # half a figure: not one
