"""The trial host as a real process in a real tmux session, running real tiny trials one after another."""

import json
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from agent import tmux, trials
from agent.runtime import host, kernels, worker
from agent.runtime.config import Measurement
from tests.conftest import ROOT
from tests.integration.test_worker import config, model, work  # noqa: F401  (model: a fixture)


def probe_config(model, out: Path, **knobs):  # noqa: F811
    cfg = config(model, out, **knobs)
    return cfg.model_copy(update={"measurement": Measurement(mode="probe", probe_steps=3, cpu_threads=1)})


def submit(queue: Path, trial_dir: Path, timeout_s: float = 300.0) -> int:
    """Ask the host for the trial, as the agent does, and wait for its exit code."""
    request = queue / host.REQUEST
    request.with_suffix(".tmp").write_text(str(trial_dir / "trial.json"))
    request.with_suffix(".tmp").replace(request)
    deadline = time.monotonic() + timeout_s
    while (code := tmux.read_exit_code(trial_dir / "exit_code")) is None:
        assert time.monotonic() < deadline, (trial_dir / "stdout.log").read_text(errors="replace")[-3000:]
        time.sleep(0.1)
    return code


@pytest.fixture
def hosted(tmp_path):
    """A host in its own tmux session, as the agent would start it; stopped after the test."""
    queue, name = tmp_path / "host", f"wan-test-host-{os.getpid()}-{tmp_path.name}"
    queue.mkdir()
    env = trials.worker_env(tmp_path, {})
    argv = [sys.executable, "-m", "agent.runtime.host", str(queue)]
    tmux.start(name, argv, ROOT, queue / "host.log", queue / "exit_code", extra_env=env)
    yield queue, name
    (queue / host.STOP).touch()
    tmux.kill(name)


def test_the_host_runs_trials_one_after_another_as_new_processes_would(model, tmp_path, hosted):  # noqa: F811
    queue, session = hosted
    results = []
    for name, knobs in (("a", {"vae_decode": "channels_last"}), ("b", {}), ("c", {})):
        cfg = probe_config(model, tmp_path / name, **knobs)
        trials.prepare(tmp_path / name, cfg)
        assert submit(queue, tmp_path / name) == 0, (tmp_path / name / "stdout.log").read_text()
        results.append(json.loads((tmp_path / name / "result.json").read_text()))
    assert [r["setup"]["host"]["trials_before"] for r in results] == [0, 1, 2]
    assert len({r["setup"]["host"]["pid"] for r in results}) == 1 and tmux.is_running(session)
    assert "done:" in (tmp_path / "b" / "stdout.log").read_text()  # each trial's output in its own log
    assert "peak_vm_GiB" not in results[1]["memory"]  # the host's address space is not the trial's
    # After a trial that switched cuDNN's autotuning on and compiled nothing, the next computes as a new process does.
    code, alone, log = work(probe_config(model, tmp_path / "alone"))
    assert code == 0, log
    for trial in ("b", "c"):
        with worker.checks(tmp_path / trial) as theirs, worker.checks(tmp_path / "alone") as own:
            assert theirs.files == own.files
            assert all(np.array_equal(theirs[k], own[k]) for k in own.files)


def test_the_host_refuses_what_needs_a_process_of_its_own_and_stops_after_a_failure(model, tmp_path, hosted):  # noqa: F811
    queue, session = hosted
    capped = probe_config(model, tmp_path / "capped").model_copy(update={"host_memory_GiB": 64.0})
    trials.prepare(tmp_path / "capped", capped)
    assert submit(queue, tmp_path / "capped") == 2
    assert "address-space cap" in (tmp_path / "capped" / "stdout.log").read_text()
    deadline = time.monotonic() + 30
    while tmux.is_running(session):  # what a refused or failed trial leaves is not trusted: the host ends
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_process_state_is_put_back_after_a_trial():
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
    assert torch._inductor.config.save_config() == state.inductor and torch._dynamo.config.save_config() == state.dynamo
    assert host.ProcessState._flags() == state.flags and torch.get_num_threads() == threads
    assert "WAN_AGENT_TEST_LEFTOVER" not in os.environ and kernels._fp8 == state.fp8_attention
    again = torch.rand(3), np.random.rand(3), random.random()  # the same draws as right after the state was taken
    assert torch.equal(draws[0], again[0]) and np.array_equal(draws[1], again[1]) and draws[2] == again[2]
