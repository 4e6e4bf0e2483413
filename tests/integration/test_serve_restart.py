"""`wan-agent serve` as a user runs it (its own process): killed with -9 in the middle of a job, its GPU worker goes
with it, and after a restart the cut job is `failed` with the reason while a finished video still downloads; a worker
that cannot load its model is reported by /health, and jobs are refused with 503 rather than queued for ever."""

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request

import psutil
import pytest
import yaml

from tests.conftest import ROOT, WAN_AGENT, free_port, start_server

openai = pytest.importorskip("openai")


def test_kill_9_mid_job_then_restart(converged, tmp_path):
    _, shared, run_id = converged
    runs = tmp_path / "runs"  # a copy: its serve/ folder is this test's own
    shutil.copytree(shared / run_id, runs / run_id, ignore=shutil.ignore_patterns("*.mp4", "*.npy", "*.npz", "serve"))
    port, log = free_port(), open(tmp_path / "server.log", "w")
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="loopback", max_retries=0)
    server = start_server(runs, run_id, port, log)
    try:
        finished = client.videos.create_and_poll(prompt="a finished clip", poll_interval_ms=100)
        assert finished.status == "completed", finished.error
        long = client.videos.create(prompt="a clip cut short", extra_body={"num_inference_steps": 1000})
        deadline = time.monotonic() + 60
        while client.videos.retrieve(long.id).status != "in_progress":
            assert time.monotonic() < deadline, "the long job never started"
            time.sleep(0.1)
        workers = psutil.Process(server.pid).children(recursive=True)
        assert workers, "no GPU worker under the server"
        os.kill(server.pid, signal.SIGKILL)
        server.wait()
        gone, alive = psutil.wait_procs(workers, timeout=15)
        assert not alive, f"worker processes outlived the server: {alive}"
        server = start_server(runs, run_id, port, log)
        cut = client.videos.retrieve(long.id)
        assert cut.status == "failed" and cut.error is not None and cut.error.code == "server_restarted"
        assert "submit it again" in cut.error.message
        assert client.videos.download_content(finished.id).read()[4:8] == b"ftyp"
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)


def test_a_worker_that_cannot_load_is_reported_and_refuses_jobs(converged, tmp_path):
    _, shared, run_id = converged
    runs = tmp_path / "runs"
    shutil.copytree(shared / run_id, runs / run_id, ignore=shutil.ignore_patterns("*.mp4", "*.npy", "*.npz", "serve"))
    best = yaml.safe_load((runs / run_id / "best.yaml").read_text())
    broken = tmp_path / "model"  # the run's model with its transformer's weights cut short
    shutil.copytree(best["model"]["path"], broken)
    for weights in (broken / "transformer").glob("*.safetensors"):
        weights.write_bytes(weights.read_bytes()[:1000])
    best["model"]["path"] = str(broken)
    (runs / run_id / "best.yaml").write_text(yaml.safe_dump(best))
    port, log = free_port(), open(tmp_path / "server.log", "w")
    server = subprocess.Popen([*WAN_AGENT, "--runs-dir", str(runs), "serve", "--run", run_id, "--port", str(port)],
                              cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        deadline, health = time.monotonic() + 120, {}
        while not str(health.get("reason", "")).startswith("failed"):
            assert time.monotonic() < deadline and server.poll() is None, health
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)
            except urllib.error.HTTPError as err:  # 503 while loading, and once it failed
                health = json.loads(err.read())
            except OSError:
                pass
            time.sleep(0.2)
        assert "could not load the configuration" in health["reason"] and "safetensors" in health["reason"].lower()
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="loopback", max_retries=0)
        with pytest.raises(openai.InternalServerError) as refused:
            client.videos.create(prompt="never generated")
        assert refused.value.status_code == 503 and "no GPU worker can take jobs" in str(refused.value)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)


def test_a_run_converged_over_several_ranks_is_served_by_a_torchrun_group(converged, tmp_path):
    _, shared, run_id = converged
    runs = tmp_path / "runs"
    shutil.copytree(shared / run_id, runs / run_id, ignore=shutil.ignore_patterns("*.mp4", "*.npy", "*.npz", "serve"))
    best = yaml.safe_load((runs / run_id / "best.yaml").read_text())
    best["knobs"]["ulysses"] = 3  # the tiny model's 3 heads over 3 ranks (CPU processes, gloo)
    (runs / run_id / "best.yaml").write_text(yaml.safe_dump(best))
    port, log = free_port(), open(tmp_path / "server.log", "w")
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="loopback", max_retries=0)
    server = start_server(runs, run_id, port, log)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as answer:
            assert "a torchrun group of 3 ranks" in json.load(answer)["reason"]
        group = psutil.Process(server.pid).children(recursive=True)
        ranks = [p for p in group if "agent.serve.worker" in " ".join(p.cmdline()) and "torch.distributed.run" not in p.cmdline()]
        assert len(ranks) == 3, [p.cmdline() for p in group]
        for prompt in ("a first clip", "a second clip, after the group sat idle"):
            video = client.videos.create_and_poll(prompt=prompt, poll_interval_ms=100)
            assert video.status == "completed", video.error
            assert client.videos.download_content(video.id).read()[4:8] == b"ftyp"
        os.kill(server.pid, signal.SIGKILL)
        server.wait()
        gone, alive = psutil.wait_procs(group, timeout=15)  # torchrun dies with the server, each rank with torchrun
        assert not alive, f"processes of the group outlived the server: {[p.cmdline() for p in alive]}"
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)
