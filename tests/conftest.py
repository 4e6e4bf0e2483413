"""Shared test set-up: offline, an isolated tmux socket per test session, a small playbook."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["WAN_AGENT_TMUX_SOCKET"] = f"wan-agent-test-{os.getpid()}"
os.environ["WAN_AGENT_OFFICIAL_REPO"] = "none"  # never GitHub: tests that fetch the official code name a local remote

ROOT = Path(__file__).resolve().parent.parent
WAN_AGENT = [sys.executable, "-m", "agent.cli"]
TOKEN = "hf_canary" + secrets.token_hex(12)  # in the agent's environment; must reach no trial, log or journal


@pytest.fixture(scope="session", autouse=True)
def _isolation(tmp_path_factory):
    """One model cache for the whole session (built once), one tmux server, killed at the end."""
    os.environ["WAN_AGENT_CACHE"] = str(tmp_path_factory.mktemp("model-cache"))
    yield
    subprocess.run(["tmux", "-L", os.environ["WAN_AGENT_TMUX_SOCKET"], "kill-server"], capture_output=True)


@pytest.fixture(scope="session")
def fake_hub(tmp_path_factory):
    """A local Hub + ModelScope on loopback serving the T2V-A14B and Lightning repos (tiny weights, real layout)."""
    from agent import variants
    from tests.fakehub import FakeHub, build_wan_repos

    repos = build_wan_repos(tmp_path_factory.mktemp("hub-repos"))
    pinned = variants.get("t2v-a14b").hub.revision
    with FakeHub() as hub:
        for repo_id, root in repos.items():
            hub.add(repo_id, root, sha=pinned if repo_id == variants.get("t2v-a14b").hub.repo else "1" * 40)
        hub.home = tmp_path_factory.mktemp("modelscope-home")
        yield hub


@pytest.fixture
def hub(fake_hub):
    """The session's fake hub, behaving well at the start of each test."""
    fake_hub.down.clear()
    fake_hub.silent.clear()
    fake_hub.corrupt.clear()
    fake_hub.stall = None
    fake_hub.requests.clear()
    fake_hub.authorizations.clear()
    yield fake_hub
    if fake_hub.stall:
        fake_hub.stall.release.set()


def hub_env(hub, **more: str) -> dict[str, str]:
    """The environment that points the real clients at ``hub`` (and lets them use the network)."""
    return (
        os.environ
        | {
            "HF_ENDPOINT": hub.url,
            "HF_HUB_OFFLINE": "0",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DISABLE_XET": "1",
            "MODELSCOPE_ENDPOINT": hub.url,
            "MODELSCOPE_DOWNLOAD_INTRA_CLOUD": "false",
            "MODELSCOPE_HOME": str(hub.home),
            "MODELSCOPE_LOG_LEVEL": "30",
            "WAN_AGENT_PROGRESS_S": "0.2",
        }
        | more
    )


def small_playbook(**overrides) -> dict:
    """The tiny playbook shrunk so that a whole run takes tens of seconds on 2 cores."""
    book = yaml.safe_load((ROOT / "playbooks" / "tiny.yaml").read_text())
    book["name"] = "tiny-test"
    book["workload"] |= {"height": 48, "width": 64, "frames": 9}
    book["baseline"]["steps"] = 12
    book["measurement"] |= {"warmup": 1, "repeats": 3}
    for key, value in overrides.items():
        book[key] = book[key] | value if isinstance(value, dict) and isinstance(book.get(key), dict) else value
    return book


def rewrite_events(run_dir: Path, change) -> None:
    """A run's journal.jsonl with each event passed through ``change`` (None drops it): runs made slower, cut short."""
    path = run_dir / "journal.jsonl"
    events = [change(json.loads(line)) for line in path.read_text().splitlines()]
    path.write_text("".join(json.dumps(e) + "\n" for e in events if e is not None))


def write_playbook(path: Path, book: dict) -> Path:
    path.write_text(yaml.safe_dump(book, sort_keys=False))
    return path


def wan_agent(*args: str, runs_dir: Path, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*WAN_AGENT, "--runs-dir", str(runs_dir), *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT, **kwargs
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(runs: Path, run_id: str, port: int, log, timeout_s: float = 120) -> subprocess.Popen:
    """`wan-agent serve` of ``run_id`` in its own process, once it answers /health (ready or not)."""
    server = subprocess.Popen([*WAN_AGENT, "--runs-dir", str(runs), "serve", "--run", run_id, "--port", str(port),
                               "--poll-after-ms", "100"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert server.poll() is None, f"the server exited with {server.returncode}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5):
                return server
        except OSError:  # not listening yet, or 503 while its worker loads
            time.sleep(0.2)
    raise AssertionError(f"the server was not ready in {timeout_s:.0f} s")


def _git(folder: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(folder), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                          check=True, capture_output=True, text=True).stdout.strip()  # fmt: skip


@pytest.fixture(scope="session")
def official_remote(tmp_path_factory) -> tuple[str, str]:
    """A git remote laid out as github.com/Wan-Video/Wan2.2 (wan/modules, utils, distributed of the installed wan22), and the
    commit to pin: one below the branch's tip, so that a checkout of the tip would show."""
    import shutil

    from agent.runtime.official import modules

    repo = tmp_path_factory.mktemp("Wan2.2")
    installed, _ = modules.code()
    for sub in ("modules", "utils", "distributed"):
        shutil.copytree(installed / sub, repo / "wan" / sub, ignore=shutil.ignore_patterns("__pycache__"))
    _git(repo, "init", "-q")
    _git(repo, "config", "uploadpack.allowAnySHA1InWant", "true")  # as GitHub serves any commit it has
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "pinned")
    pinned = _git(repo, "rev-parse", "HEAD")
    (repo / "README.md").write_text("later\n")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "later")
    return f"file://{repo}", pinned


@pytest.fixture(scope="session")
def converged(tmp_path_factory, fake_hub):
    """One whole run on the tiny model as a user with a network gets it: fetched from the (fake) Hub with the real
    client, by the variant's name, with tokens in the environment; later commands run offline. Shared by every module
    that reads a converged run: copy it before changing it."""
    base = tmp_path_factory.mktemp("agent")
    book = write_playbook(base / "tiny-test.yaml", small_playbook(model={"source": "t2v-a14b", "seed": 0}))
    secrets_env = hub_env(fake_hub, HF_TOKEN=TOKEN, MODELSCOPE_API_TOKEN=TOKEN)
    done = wan_agent("run", "--playbook", str(book), runs_dir=base / "runs", env=secrets_env)
    assert done.returncode == 0, done.stderr
    run_id = done.stdout.strip()
    return base, base / "runs", run_id
