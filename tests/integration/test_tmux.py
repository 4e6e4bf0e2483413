"""Trial sessions on a real tmux server (the test session's own socket)."""

import os
import secrets
import subprocess
import sys
import time

import psutil

from agent import tmux

EVIL = "a'b\"c; $(touch {canary}) `touch {canary}` && rm -rf / #\nsecond line"


def run(tmp_path, name, argv, deadline_s=30, idle_s=10):
    log, exit_file = tmp_path / f"{name}.log", tmp_path / f"{name}.rc"
    tmux.start(name, argv, tmp_path, log, exit_file)
    return tmux.wait(name, log, exit_file, deadline_s, idle_s, poll_s=0.1), log


def test_exit_code_and_output_come_back_and_arguments_stay_verbatim(tmp_path):
    canary = tmp_path / "executed"
    evil = EVIL.format(canary=canary)
    code = "import sys; print(repr(sys.argv[1])); sys.exit(3)"
    result, log = run(tmp_path, "t-exit", [sys.executable, "-c", code, evil])
    assert result.outcome == "exited" and result.exit_code == 3
    assert log.read_text().strip() == repr(evil)
    assert not canary.exists()
    assert not tmux.is_running("t-exit")


def test_idle_timeout_kills_the_whole_process_group(tmp_path):
    # The worker starts a child that would outlive a naive kill of the shell.
    code = "import subprocess, time; p = subprocess.Popen(['sleep', '300']); print(p.pid, flush=True); time.sleep(300)"
    result, log = run(tmp_path, "t-idle", [sys.executable, "-c", code], idle_s=1.5)
    assert result.outcome == "idle" and result.exit_code is None
    child = int(log.read_text().split()[0])
    time.sleep(0.2)
    assert not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE
    assert not tmux.is_running("t-idle")


def test_deadline_kills_a_chatty_hang(tmp_path):
    code = "import time\nwhile True:\n    print('still here', flush=True); time.sleep(0.2)"
    result, _ = run(tmp_path, "t-deadline", [sys.executable, "-c", code], deadline_s=2, idle_s=10)
    assert result.outcome == "timeout"
    assert result.wall_s >= 2


def test_a_session_killed_from_outside_is_lost(tmp_path):
    log, exit_file = tmp_path / "l.log", tmp_path / "l.rc"
    tmux.start("t-lost", ["sleep", "60"], tmp_path, log, exit_file)
    subprocess.run(["tmux", "-L", tmux.server().socket_name, "kill-session", "-t", "t-lost"], check=True)
    result = tmux.wait("t-lost", log, exit_file, 30, 10, poll_s=0.1)
    assert result.outcome == "lost" and result.exit_code is None


def test_a_trial_sees_only_the_allow_list_even_from_a_server_started_with_a_token(tmp_path, monkeypatch):
    token = "hf_canary_" + secrets.token_hex(8)
    socket = f"wan-agent-env-{secrets.token_hex(4)}"
    monkeypatch.setenv(tmux.SOCKET_ENV, socket)
    monkeypatch.setenv("HF_TOKEN", token)  # the agent's own environment holds it too
    dirty = os.environ | {"MODELSCOPE_API_TOKEN": token, "CUDA_API_KEY": token, "UNLISTED": "x"}
    # Another process, with secrets in its environment, started the tmux server first.
    subprocess.run(["tmux", "-L", socket, "new-session", "-d", "-s", "other", "sleep 60"], env=dirty, check=True)
    try:
        result, log = run(tmp_path, "t-env", ["env"])
        seen = dict(line.split("=", 1) for line in log.read_text().splitlines() if "=" in line)
        server_env = subprocess.run(["tmux", "-L", socket, "show-environment", "-g"], capture_output=True, text=True).stdout
    finally:
        subprocess.run(["tmux", "-L", socket, "kill-server"], capture_output=True)
    assert result.exit_code == 0 and seen["PATH"] == os.environ["PATH"]
    assert token not in log.read_text() and token not in server_env
    assert not {"HF_TOKEN", "MODELSCOPE_API_TOKEN", "CUDA_API_KEY", "UNLISTED", "TMUX"} & seen.keys()


def test_session_names_are_safe_for_tmux():
    assert tmux.session_name("20261123-tiny", "01-fp8.v2:x") == "wan-20261123-tiny-01-fp8-v2-x"
