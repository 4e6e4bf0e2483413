"""SIGKILL the agent in the middle of a trial, then `wan-agent resume`: the run finishes, no trial is
run or counted twice, and the journal stays consistent."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import yaml

from agent import tmux, trial_host
from agent.sources import synthetic
from tests.conftest import ROOT, WAN_AGENT, small_playbook, wan_agent, write_playbook


def wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _as_a_background_job() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # what a shell script's `cmd &` hands its job


def start_agent(tmp_path: Path, runs: Path, share: bool = False) -> subprocess.Popen:
    """`wan-agent run` on the small playbook, in the background as a script's `&` starts it (SIGINT ignored, which
    Ctrl-C and `wan-agent stop` must still reach); its first stdout line is the run id. Each trial in a process of its
    own, or with ``share`` in the run's trial host."""
    book = write_playbook(tmp_path / "tiny-test.yaml", small_playbook(measurement={"share_process": share}))
    return subprocess.Popen(
        [*WAN_AGENT, "--runs-dir", str(runs), "run", "--playbook", str(book)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
        preexec_fn=_as_a_background_job,
    )


def start_agent_until_fp8_is_timing(tmp_path: Path, runs: Path, share: bool = False) -> tuple[subprocess.Popen, str, Path, str]:
    """Start the agent and wait until its second trial (01-fp8) is inside its timed repeats; the session it runs in."""
    agent = start_agent(tmp_path, runs, share)
    run_id = agent.stdout.readline().strip()
    trial = runs / run_id / "trials" / "01-fp8"
    log = trial / "stdout.log"
    wait_for(lambda: log.exists() and "repeat 1/" in log.read_text(), 300, "the fp8 trial to be timing")
    return agent, run_id, trial, trial_host.session(run_id) if share else tmux.session_name(run_id, "01-fp8")


@pytest.mark.parametrize("share", [False, True], ids=["own process", "trial host"])
@pytest.mark.parametrize("resume_when", ["trial_still_running", "trial_finished_meanwhile"])
def test_sigkill_mid_trial_then_resume(tmp_path, resume_when, share):
    runs = tmp_path / "runs"
    agent, run_id, trial, session = start_agent_until_fp8_is_timing(tmp_path, runs, share)
    worker = _worker_pid(session)
    if resume_when == "trial_still_running":  # held until the resumed agent re-attaches: a tiny trial ends in ~1 s
        os.kill(worker, signal.SIGSTOP)
    os.kill(agent.pid, signal.SIGKILL)
    agent.wait()
    assert tmux.is_running(session), "the worker lives on in its tmux session"
    if resume_when == "trial_finished_meanwhile":
        wait_for(lambda: (trial / "exit_code").exists(), 300, "the orphaned trial to finish")
        done = wan_agent("resume", run_id, runs_dir=runs)
    else:
        done = _resume_then_release(runs, run_id, worker)
    assert done.returncode == 0, done.stderr

    lines = (runs / run_id / "journal.jsonl").read_text().splitlines()
    events = [json.loads(line) for line in lines]  # every line whole
    keys = [e["key"] for e in events if "key" in e]
    assert len(keys) == len(set(keys)), "no event recorded twice"
    decisions = [e["name"] for e in events if e["kind"] == "decision"]
    assert decisions == ["00-baseline", "01-fp8", "02-lightning"]
    log = (trial / "stdout.log").read_text()
    assert log.count("warm-up 1/1\n") == 1 and log.count("done:") == 1, "the interrupted trial ran once"
    assert (runs / run_id / "best.yaml").exists()
    table_rows = [r for r in (runs / run_id / "journal.md").read_text().splitlines() if r.startswith("| 0")]
    assert len(table_rows) == 3
    telemetry = json.loads((trial / "telemetry.json").read_text())
    if resume_when == "trial_still_running":
        assert "partial" in telemetry
        assert "re-attaching" in done.stderr
    else:
        assert "already finished" in done.stderr


def test_resume_of_an_unknown_run_is_a_clear_error(tmp_path):
    done = wan_agent("resume", "no-such-run", runs_dir=tmp_path)
    assert done.returncode == 2 and "no run 'no-such-run'" in done.stderr


def test_two_agents_cannot_drive_one_run(tmp_path):
    runs = tmp_path / "runs"
    agent = start_agent(tmp_path, runs)
    try:
        run_id = agent.stdout.readline().strip()
        wait_for(lambda: (Path(runs) / run_id / "trials").exists(), 120, "the first trial")
        done = wan_agent("resume", run_id, runs_dir=runs)
        assert done.returncode == 2 and "being driven by another wan-agent process" in done.stderr
    finally:
        agent.kill()
        agent.wait()


def _resume_then_release(runs: Path, run_id: str, worker: int) -> subprocess.CompletedProcess:
    """`wan-agent resume`, letting the stopped worker go on once the resumed agent has re-attached to it."""
    argv = [*WAN_AGENT, "--runs-dir", str(runs), "resume", run_id]
    resumed = subprocess.Popen(argv, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    said = []
    for line in resumed.stderr:  # type: ignore[union-attr]
        said.append(line)
        if "re-attaching" in line:
            os.kill(worker, signal.SIGCONT)
            break
    else:
        os.kill(worker, signal.SIGCONT)
    out, err = resumed.communicate(timeout=300)
    return subprocess.CompletedProcess(resumed.args, resumed.returncode, out, "".join(said) + err)


def _worker_pid(session: str) -> int | None:
    pane = tmux.pane_pid(session)
    if pane is None:
        return None
    for child in psutil.Process(pane).children(recursive=True):
        if any(name in " ".join(child.cmdline()) for name in ("agent.runtime.worker", "agent.runtime.host")):
            return child.pid
    return None


@pytest.mark.parametrize("how", ["kill -9 the worker", "tmux kill-server"])
def test_a_trial_killed_from_outside_runs_once_more(tmp_path, how):
    runs = tmp_path / "runs"
    agent, run_id, trial, session = start_agent_until_fp8_is_timing(tmp_path, runs)
    if how == "tmux kill-server":
        subprocess.run(["tmux", "-L", tmux.server().socket_name, "kill-server"], check=True)
    else:
        os.kill(_worker_pid(session), signal.SIGKILL)
    assert agent.wait(timeout=300) == 0
    events = [json.loads(line) for line in (runs / run_id / "journal.jsonl").read_text().splitlines()]
    decisions = [e for e in events if e["kind"] == "decision"]
    assert [d["name"] for d in decisions] == ["00-baseline", "01-fp8", "02-lightning"]
    fp8 = decisions[1]
    assert fp8["verdict"] in ("kept", "reverted") and len(fp8["reruns"]) == 1
    assert ("signal 9" if how.startswith("kill") else "vanished") in fp8["reruns"][0]
    assert (trial / "stdout.attempt1.log").exists() and "done:" in (trial / "stdout.log").read_text()
    assert "**Rerun.**" in (runs / run_id / "journal.md").read_text()


def test_a_worker_killed_twice_fails_its_trial_and_the_run_goes_on(tmp_path):
    runs = tmp_path / "runs"
    agent, run_id, trial, session = start_agent_until_fp8_is_timing(tmp_path, runs)
    os.kill(_worker_pid(session), signal.SIGKILL)
    # The rerun is killed while it loads (seconds), not while it times (a tiny clip's repeats end in ~1 s).
    wait_for(lambda: (trial / "stdout.attempt1.log").exists() and _worker_pid(session), 60, "the rerun's worker")
    os.kill(_worker_pid(session), signal.SIGKILL)
    assert agent.wait(timeout=300) == 0
    events = [json.loads(line) for line in (runs / run_id / "journal.jsonl").read_text().splitlines()]
    decisions = {e["name"]: e for e in events if e["kind"] == "decision"}
    assert list(decisions) == ["00-baseline", "01-fp8", "02-lightning"]  # never a third attempt
    fp8 = decisions["01-fp8"]
    assert fp8["verdict"] == "failed" and "signal 9" in fp8["reason"] and len(fp8["reruns"]) == 1
    assert not [e for e in events if e["kind"] == "remediation"]  # no rule for it: recorded, not retried
    best = yaml.safe_load((runs / run_id / "best.yaml").read_text())
    verdicts = {name: (d["verdict"], d["reason"]) for name, d in decisions.items()}
    assert best["knobs"]["fp8"] == "none" and best["measured"]["name"] != "01-fp8", verdicts


def test_sigkill_while_the_model_is_being_built_then_resume(tmp_path):
    cache = tmp_path / "cache"  # empty: fetch builds the tiny model
    env = os.environ | {"WAN_AGENT_CACHE": str(cache)}
    book = write_playbook(tmp_path / "tiny-test.yaml", small_playbook())
    runs = tmp_path / "runs"
    agent = subprocess.Popen(
        [*WAN_AGENT, "--runs-dir", str(runs), "run", "--playbook", str(book)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
        env=env,
    )
    run_id = agent.stdout.readline().strip()
    wait_for(lambda: any(p.is_dir() for p in cache.glob(".synthetic-tiny-*")), 120, "the build to start")
    os.kill(agent.pid, signal.SIGKILL)
    agent.wait()
    assert not list(cache.glob("synthetic-tiny-*")), "no half-built model where a finished one goes"
    done = wan_agent("resume", run_id, runs_dir=runs, env=env)
    assert done.returncode == 0, done.stderr
    assert [p.name for p in cache.iterdir() if p.is_dir()] == [
        f"synthetic-tiny-v{synthetic.FORMAT}-seed0"
    ]  # the killed build's staging is gone
    events = [json.loads(line) for line in (runs / run_id / "journal.jsonl").read_text().splitlines()]
    assert [e["key"] for e in events if e["kind"] == "fetch"] == ["fetch"]
    assert [e["name"] for e in events if e["kind"] == "decision"] == ["00-baseline", "01-fp8", "02-lightning"]


def _group_alive(pgid: int | None) -> bool:
    try:
        os.killpg(pgid, 0) if pgid else None
        return pgid is not None
    except ProcessLookupError:
        return False


def _live_sessions(runs: Path, run_id: str) -> list[str]:
    names = (tmux.session_name(run_id, d.name) for d in (runs / run_id / "trials").glob("*"))
    return [name for name in names if tmux.is_running(name)]


def test_ctrl_c_and_stop_take_the_trial_down_and_resume_finishes(tmp_path):
    runs = tmp_path / "runs"
    agent, run_id, trial, session = start_agent_until_fp8_is_timing(tmp_path, runs)
    worker = tmux.pane_pid(session)
    agent.send_signal(signal.SIGINT)  # Ctrl-C
    assert agent.wait(timeout=60) == 130
    assert not _live_sessions(runs, run_id) and not _group_alive(worker), "the trial no longer holds the machine"
    assert (trial / "stdout.interrupted.log").exists() and not (trial / "exit_code").exists()

    resumed = subprocess.Popen([*WAN_AGENT, "--runs-dir", str(runs), "resume", run_id], cwd=ROOT, stderr=subprocess.DEVNULL)
    wait_for(lambda: bool(_live_sessions(runs, run_id)), 300, "the resumed run's trial")
    worker = tmux.pane_pid(_live_sessions(runs, run_id)[0])
    stopped = wan_agent("stop", run_id, runs_dir=runs)
    assert stopped.returncode == 0 and f"the agent (pid {resumed.pid})" in stopped.stdout, stopped.stdout + stopped.stderr
    assert resumed.wait(timeout=60) == 130
    assert not _live_sessions(runs, run_id) and not _group_alive(worker)

    done = wan_agent("resume", run_id, runs_dir=runs)
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in (runs / run_id / "journal.jsonl").read_text().splitlines()]
    assert [e["name"] for e in events if e["kind"] == "decision"] == ["00-baseline", "01-fp8", "02-lightning"]
    assert wan_agent("stop", run_id, runs_dir=runs).stdout.strip().endswith("nothing was running")
