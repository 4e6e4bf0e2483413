"""A runs directory that is full, fills up mid-trial, or turns read-only: the agent stops cleanly with a
message saying what to do, damages nothing it wrote before, and `wan-agent resume` finishes the run once
the disk takes writes again. Real small and read-only filesystems (tmpfs), so mount rights are needed
(root, as in CI); skipped without them."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from agent import tmux
from tests.conftest import ROOT, WAN_AGENT, small_playbook, wan_agent, write_playbook
from tests.integration.test_resume import wait_for


def mount(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["mount", *args], capture_output=True, text=True)


@pytest.fixture
def small_fs(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    made = mount("-t", "tmpfs", "-o", "size=4m", "tmpfs", str(runs))
    if made.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.strip()}")
    yield runs
    subprocess.run(["tmux", "-L", tmux.server().socket_name, "kill-server"], capture_output=True)
    subprocess.run(["umount", "-l", str(runs)], capture_output=True)


def remount(runs: Path, options: str) -> None:
    for _ in range(50):  # a process that just died may still hold a file open for writing
        if mount("-o", f"remount,{options}", str(runs)).returncode == 0:
            return
        time.sleep(0.2)
    raise AssertionError(f"could not remount {runs} {options}")


def assert_converged_once(run_dir: Path) -> list[dict]:
    events = [json.loads(line) for line in (run_dir / "journal.jsonl").read_text().splitlines()]  # every line whole
    keys = [e["key"] for e in events if "key" in e]
    assert len(keys) == len(set(keys)), "no event recorded twice"
    decisions = [e for e in events if e["kind"] == "decision"]
    assert [d["name"] for d in decisions] == ["00-baseline", "01-fp8", "02-lightning"]
    assert (run_dir / "best.yaml").exists()
    return decisions


def start_agent(tmp_path: Path, runs: Path) -> tuple[subprocess.Popen, str, Path]:
    book = write_playbook(tmp_path / "tiny-test.yaml", small_playbook())
    stderr = tmp_path / "agent.stderr"  # outside the filesystem under test
    agent = subprocess.Popen(
        [*WAN_AGENT, "--runs-dir", str(runs), "run", "--playbook", str(book)],
        stdout=subprocess.PIPE,
        stderr=stderr.open("w"),
        text=True,
        cwd=ROOT,
    )
    return agent, agent.stdout.readline().strip(), stderr


def test_a_full_disk_stops_before_the_trial_and_resume_finishes(tmp_path, small_fs):
    book = write_playbook(tmp_path / "tiny-test.yaml", small_playbook())
    first = wan_agent("run", "--playbook", str(book), runs_dir=small_fs)
    run_id = first.stdout.strip()
    assert first.returncode == 1, first.stderr
    assert "MiB free" in first.stderr and f"wan-agent resume {run_id}" in first.stderr
    assert "Traceback" not in first.stderr
    assert not (small_fs / run_id / "trials").exists(), "no trial started on a disk without room for it"
    remount(small_fs, "size=64m")
    done = wan_agent("resume", run_id, runs_dir=small_fs)
    assert done.returncode == 0, done.stderr
    assert_converged_once(small_fs / run_id)


def test_a_disk_filling_up_mid_trial_stops_the_run_and_resume_reruns_that_trial(tmp_path, small_fs):
    remount(small_fs, "size=64m")
    agent, run_id, stderr = start_agent(tmp_path, small_fs)
    trial = small_fs / run_id / "trials" / "01-fp8"
    # Filled as soon as the worker starts: it is still importing, so it cannot finish before the disk is full.
    wait_for(lambda: (trial / "stdout.log").exists(), 300, "the fp8 trial to start")
    filler = small_fs / "filler"
    with open(filler, "wb", buffering=0) as f:  # unbuffered: nothing left to flush (and fail) on close
        try:
            while True:
                f.write(b"\0" * 2**16)
        except OSError:
            pass  # the disk is full
    assert agent.wait(timeout=300) == 1
    said = stderr.read_text()
    assert "No space left on device" in said and f"wan-agent resume {run_id}" in said
    journal = (small_fs / run_id / "journal.jsonl").read_text()
    assert '"decision:01-fp8"' not in journal, "a trial the disk broke is not judged"
    filler.unlink()
    done = wan_agent("resume", run_id, runs_dir=small_fs)
    assert done.returncode == 0, done.stderr
    decisions = assert_converged_once(small_fs / run_id)
    assert decisions[1]["verdict"] in ("kept", "reverted")
    assert (trial / "stdout.log").read_text().count("done:") == 1


def test_a_read_only_runs_directory_is_refused_then_resumed(tmp_path, small_fs):
    remount(small_fs, "size=64m")
    agent, run_id, _ = start_agent(tmp_path, small_fs)
    journal = small_fs / run_id / "journal.jsonl"
    wait_for(lambda: '"decision:00-baseline"' in journal.read_text(), 300, "the baseline's decision")
    os.kill(agent.pid, signal.SIGKILL)
    agent.wait()
    subprocess.run(["tmux", "-L", tmux.server().socket_name, "kill-server"], capture_output=True)
    remount(small_fs, "ro")
    before = {p: p.read_bytes() for p in (small_fs / run_id).rglob("*") if p.is_file()}
    refused = wan_agent("resume", run_id, runs_dir=small_fs)
    assert refused.returncode == 1
    assert "Read-only file system" in refused.stderr and "Traceback" not in refused.stderr
    assert {p: p.read_bytes() for p in (small_fs / run_id).rglob("*") if p.is_file()} == before
    remount(small_fs, "rw")
    done = wan_agent("resume", run_id, runs_dir=small_fs)
    assert done.returncode == 0, done.stderr
    assert_converged_once(small_fs / run_id)
