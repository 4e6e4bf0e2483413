"""`wan-agent serve` of a configuration converged over two GPUs: a warm torchrun group with a rank on each GPU
(NCCL for the clip, gloo for handing jobs over), a job generated through the HTTP API, and the group gone with the
server when it is killed with -9. Skipped with fewer than 2 GPUs."""

import json
import os
import signal
import time
import urllib.request

import psutil
import pytest
import torch
import yaml

from tests.conftest import free_port, small_playbook, start_server, wan_agent, write_playbook

pytestmark = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")


def call(port: int, path: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.load(answer)


def gpu_pids() -> dict[int, set[int]]:
    import pynvml

    pynvml.nvmlInit()
    found = {}
    for index in range(2):
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        found[index] = {p.pid for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle)}
    return found


def test_a_cfg_split_best_is_served_by_a_rank_on_each_gpu(tmp_path):
    runs = tmp_path / "runs"
    rung = {"name": "tiled-vae", "hypothesis": "One cheap rung (a ladder may not be empty).", "set": {"vae_tiling": True}}
    book = write_playbook(tmp_path / "gpu.yaml", small_playbook(device="cuda", ladder=[rung]))
    done = wan_agent("run", "--playbook", str(book), runs_dir=runs)
    assert done.returncode == 0, done.stderr[-3000:]
    run_id = done.stdout.strip()
    best = yaml.safe_load((runs / run_id / "best.yaml").read_text())
    best["knobs"]["cfg_parallel"] = True  # the tiny model with CFG: its two branches on the two GPUs
    (runs / run_id / "best.yaml").write_text(yaml.safe_dump(best))
    port, log = free_port(), open(tmp_path / "server.log", "w")
    server = start_server(runs, run_id, port, log, timeout_s=300)
    try:
        deadline = time.monotonic() + 300
        while True:  # 503 while the group loads and warms up
            try:
                health = call(port, "/health")
                break
            except OSError:
                assert time.monotonic() < deadline, (tmp_path / "server.log").read_text()[-3000:]
                time.sleep(0.5)
        assert "a torchrun group of 2 ranks" in health["reason"], health
        on_gpus = gpu_pids()
        assert on_gpus[0] and on_gpus[1], on_gpus  # a rank holds each GPU
        job = call(port, "/v1/videos", {"prompt": "a cat on two GPUs"})
        while job["status"] in ("queued", "in_progress"):
            time.sleep(0.2)
            job = call(port, f"/v1/videos/{job['id']}")
        assert job["status"] == "completed", job
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/videos/{job['id']}/content") as video:
            assert video.read()[4:8] == b"ftyp"
        group = psutil.Process(server.pid).children(recursive=True)
        os.kill(server.pid, signal.SIGKILL)
        server.wait()
        gone, alive = psutil.wait_procs(group, timeout=20)
        assert not alive, [p.cmdline() for p in alive]
        assert not any(gpu_pids().values())
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)
        print((tmp_path / "server.log").read_text()[-4000:])
