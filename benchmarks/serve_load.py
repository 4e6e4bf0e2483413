"""Load on `wan-agent serve`: N concurrent clients (the real openai SDK) for M minutes against a converged run's
configuration. Starts the server itself on loopback, waits for /health to say ready, runs the clients, stops it.
Each client submits a clip, polls it to the end, and submits the next until the time is up. Writes
OUT/serve_load.json with the hardware and versions: latency (submit -> completed, as the client sees it; p50, p95),
queue wait (submit -> first seen in progress, polled every --poll-s), clips per hour, and energy per clip (NVML's
counter over the whole load divided by the clips made; absent without NVML). `--report` prints Markdown.

    python benchmarks/serve_load.py --runs-dir RUNS --run RUN_ID --out OUT --clients 4 --minutes 3
    python benchmarks/serve_load.py --out OUT --report
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent import hardware  # noqa: E402
from agent.files import write_json_atomic  # noqa: E402
from agent.telemetry import Nvml  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(base: str, server: subprocess.Popen, timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with code {server.returncode} before it was ready")
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=5) as response:
                return json.loads(response.read())
        except OSError:  # not listening yet, or 503 while the worker loads
            time.sleep(1)
    raise SystemExit(f"the server was not ready within {timeout_s:.0f} s")


def client(base: str, until: float, poll_s: float, extra: dict, made: list[dict], lock: threading.Lock) -> None:
    from openai import OpenAI

    warnings.filterwarnings("ignore", category=DeprecationWarning, module="openai")  # the hosted API's, not ours

    api = OpenAI(base_url=f"{base}/v1", api_key="loopback", max_retries=0)
    while time.monotonic() < until:
        t0 = time.monotonic()
        video, started = api.videos.create(prompt="A cat walking on the grass, sunny afternoon", extra_body=extra), None
        while video.status in ("queued", "in_progress"):
            if started is None and video.status == "in_progress":
                started = time.monotonic()
            time.sleep(poll_s)
            video = api.videos.retrieve(video.id)
        done = time.monotonic()
        with lock:
            made.append({"id": video.id, "status": video.status, "latency_s": done - t0,
                         "queue_wait_s": (started or done) - t0, "finished_at": done})  # fmt: skip


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def measure(args) -> dict:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = open(Path(args.out) / "server.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "agent.cli", "--runs-dir", args.runs_dir, "serve", "--run", args.run,
                               "--port", str(port), "--queue-size", str(args.clients), "--poll-after-ms", "500"],
                              cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        t0 = time.monotonic()
        health = wait_ready(base, server, args.ready_timeout_s)
        ready_s = time.monotonic() - t0
        nvml = Nvml(0)
        energy0, start = nvml.sample().get("energy_J"), time.monotonic()
        made: list[dict] = []
        lock = threading.Lock()
        until = start + 60 * args.minutes
        threads = [threading.Thread(target=client, args=(base, until, args.poll_s, json.loads(args.extra), made, lock))
                   for _ in range(args.clients)]  # fmt: skip
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed, energy1 = time.monotonic() - start, nvml.sample().get("energy_J")
    finally:
        server.terminate()
        server.wait(timeout=60)
    ok = [m for m in made if m["status"] == "completed"]
    latency, wait = [m["latency_s"] for m in ok], [m["queue_wait_s"] for m in ok]
    return {
        "hardware": hardware.probe(),
        "versions": hardware.versions(),
        "run": args.run,
        "health": health,
        "ready_s": ready_s,
        "clients": args.clients,
        "minutes": args.minutes,
        "elapsed_s": elapsed,
        "clips": len(ok),
        "failed": len(made) - len(ok),
        "clips_per_hour": 3600 * len(ok) / elapsed,
        "latency_p50_s": statistics.median(latency) if ok else None,
        "latency_p95_s": percentile(latency, 0.95) if ok else None,
        "queue_wait_p50_s": statistics.median(wait) if ok else None,
        "queue_wait_p95_s": percentile(wait, 0.95) if ok else None,
        **({"energy_per_clip_J": (energy1 - energy0) / len(ok)} if ok and energy0 is not None and energy1 is not None else {}),
        "jobs": made,
    }


def markdown(data: dict) -> str:
    gpus = data["hardware"]["gpus"]
    machine = f"{gpus[0]['name']} (driver {gpus[0]['driver']})" if gpus else "CPU"
    energy = f"{data['energy_per_clip_J']:.0f} J" if "energy_per_clip_J" in data else "not measured"
    model = str(data["health"].get("model", "?"))
    return "\n".join([
        f"`wan-agent serve` on **{machine}**, torch {data['versions']['torch']}, diffusers {data['versions']['diffusers']}; "
        f"model `{model}`{' (random weights: synthetic-weight figures)' if model.startswith('synthetic:') else ''}; "
        f"run `{data['run']}` ({data['health'].get('reason', data['health'])}); {data['clients']} clients for "
        f"{data['minutes']} min; ready after {data['ready_s']:.0f} s.",
        "",
        "| clips | failed | clips per hour | latency p50 | latency p95 | queue wait p50 | queue wait p95 | energy per clip |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| {data['clips']} | {data['failed']} | {data['clips_per_hour']:.0f} | {data['latency_p50_s']:.2f} s | "
        f"{data['latency_p95_s']:.2f} s | {data['queue_wait_p50_s']:.2f} s | {data['queue_wait_p95_s']:.2f} s | {energy} |",
    ]) + "\n"  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--run", default="best")
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--minutes", type=float, default=3)
    p.add_argument("--poll-s", type=float, default=0.5)
    p.add_argument("--extra", default="{}", help="JSON of extra fields for every request, e.g. '{\"seed\": 1}'")
    p.add_argument("--ready-timeout-s", type=float, default=900)
    p.add_argument("--report", action="store_true")
    args = p.parse_args()
    out = Path(args.out)
    if args.report:
        print(markdown(json.loads((out / "serve_load.json").read_text())), end="")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    data = measure(args)
    write_json_atomic(out / "serve_load.json", data)
    print(markdown(data), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
