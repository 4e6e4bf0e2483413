"""The trial host as a real process in a real tmux session, started and asked as the agent does (agent/trial_host.py),
running real tiny trials one after another."""

import json
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from agent import tmux, trial_host, trials
from agent.runtime import host, kernels, worker
from agent.runtime.config import Measurement
from tests.integration.test_worker import config, model, work  # noqa: F401  (model: a fixture)


def probe_config(model, out: Path, **knobs):  # noqa: F811
    cfg = config(model, out, **knobs)
    return cfg.model_copy(update={"measurement": Measurement(mode="probe", probe_steps=3, cpu_threads=1, share_process=True)})


@pytest.fixture
def run(tmp_path):
    """A run's id and folder; its host stopped after the test."""
    run_id = f"test-host-{os.getpid()}-{tmp_path.name}"
    yield run_id, tmp_path
    trial_host.stop(run_id, tmp_path)


def through_host(run, trial_dir: Path, timeout_s: float = 300.0) -> int:
    """Ask the run's host for the trial, as the agent does, and wait for its exit code."""
    run_id, run_dir = run
    trial_host.submit(run_id, run_dir, trial_dir, sys.executable, trials.worker_env(run_dir, {}))
    deadline = time.monotonic() + timeout_s
    while (code := tmux.read_exit_code(trial_dir / "exit_code")) is None:
        assert time.monotonic() < deadline, (trial_dir / "stdout.log").read_text(errors="replace")[-3000:]
        time.sleep(0.1)
    return code


def test_the_host_runs_trials_one_after_another_as_new_processes_would(model, tmp_path, run):  # noqa: F811
    results = []
    for name, knobs in (("a", {"vae_decode": "channels_last"}), ("b", {}), ("c", {})):
        trials.prepare(tmp_path / name, probe_config(model, tmp_path / name, **knobs))
        assert trial_host.asked(tmp_path / name, sys.executable) == (True, True)
        assert through_host(run, tmp_path / name) == 0, (tmp_path / name / "stdout.log").read_text()
        results.append(json.loads((tmp_path / name / "result.json").read_text()))
    assert [r["setup"]["host"]["trials_before"] for r in results] == [0, 1, 2]
    assert len({r["setup"]["host"]["pid"] for r in results}) == 1 and tmux.is_running(trial_host.session(run[0]))
    assert results[0]["setup"]["host"]["pid"] in trial_host.pids(run[0])  # told apart from another process on the GPU
    assert "done:" in (tmp_path / "b" / "stdout.log").read_text()  # each trial's output in its own log
    assert "peak_vm_GiB" not in results[1]["memory"]  # the host's address space is not the trial's
    # After a trial that switched cuDNN's autotuning on, the next computes as a new process does.
    code, alone, log = work(probe_config(model, tmp_path / "alone"))
    assert code == 0, log
    for trial in ("b", "c"):
        with worker.checks(tmp_path / trial) as theirs, worker.checks(tmp_path / "alone") as own:
            assert theirs.files == own.files
            assert all(np.array_equal(theirs[k], own[k]) for k in own.files)
    assert trial_host.stop(*run) and not tmux.is_running(trial_host.session(run[0]))


def test_the_host_refuses_what_needs_a_process_of_its_own_and_stops_after_a_failure(model, tmp_path, run):  # noqa: F811
    capped = probe_config(model, tmp_path / "capped").model_copy(update={"host_memory_GiB": 64.0})
    trials.prepare(tmp_path / "capped", capped)
    assert trial_host.asked(tmp_path / "capped", sys.executable) == (True, False)  # run in a process of its own
    assert through_host(run, tmp_path / "capped") == 2  # and the host, asked anyway, refuses it
    assert "address-space cap" in (tmp_path / "capped" / "stdout.log").read_text()
    deadline = time.monotonic() + 30
    while tmux.is_running(trial_host.session(run[0])):  # what a refused or failed trial leaves is not trusted: it ends
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_process_state_is_put_back_after_a_trial():
    configs = torch._inductor.config.get_config_copy(), torch._dynamo.config.get_config_copy()
    state = host.ProcessState()
    torch._inductor.config.coordinate_descent_tuning = not torch._inductor.config.coordinate_descent_tuning
    torch._dynamo.config.recompile_limit += 5
    torch.backends.cudnn.benchmark = not torch.backends.cudnn.benchmark
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)
    draws = torch.rand(3), np.random.rand(3), random.random()
    os.environ["WAN_AGENT_TEST_LEFTOVER"] = "1"
    kernels._fp8 = not kernels._fp8
    state.restore()
    assert (torch._inductor.config.get_config_copy(), torch._dynamo.config.get_config_copy()) == configs
    assert host.ProcessState._flags() == state.flags and torch.get_num_threads() == threads
    assert "WAN_AGENT_TEST_LEFTOVER" not in os.environ and kernels._fp8 == state.fp8_attention
    again = torch.rand(3), np.random.rand(3), random.random()  # the same draws as right after the state was taken
    assert torch.equal(draws[0], again[0]) and np.array_equal(draws[1], again[1]) and draws[2] == again[2]


def test_a_trial_that_would_have_killed_its_worker_gets_an_exit_code_and_its_traceback(model, tmp_path, run):  # noqa: F811
    (tmp_path / "a-file").write_text("")
    broken = probe_config(model, tmp_path / "broken").model_copy(update={"output_dir": str(tmp_path / "a-file" / "out")})
    trials.prepare(tmp_path / "broken", broken)  # its result cannot be written: a worker process would die of it
    assert through_host(run, tmp_path / "broken") == 1
    log = (tmp_path / "broken" / "stdout.log").read_text()
    assert "Traceback" in log and "NotADirectoryError" in log
    assert (tmp_path / trial_host.QUEUE / "stop").exists()  # said before the exit code: the next trial gets a new host
