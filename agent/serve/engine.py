"""The server's side of the GPU worker (agent/serve/worker.py): start it on a converged run's configuration, feed it
one job at a time from a bounded queue, turn its reports into job events, and restart it when it dies.

A job the worker was running when it died fails with the reason (never left in progress). A worker that dies before
it is ready is not restarted (the load itself fails: /health says why); one that dies later is restarted, up to
``MAX_RESTARTS`` times. The worker's environment is the agent's without secrets (agent/tmux.py's rule: the
server's API key never reaches it); its log is ``serve/worker.log`` in the run directory.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from agent import runs, tmux, trials
from agent.files import read_json, write_text_atomic
from agent.runtime import parallel
from agent.serve.worker import PARENT_ENV

logger = logging.getLogger(__name__)

MAX_RESTARTS = 3
MAX_PROMPT_CHARS = 2000  # UMT5 reads 512 tokens; a longer prompt is cut, so it is refused instead
MAX_SIDE = 1280  # Wan2.2's largest trained size (720p), either orientation
MAX_FRAMES = 241  # agent.runtime.config.Workload's bound
MAX_PIXELS = 1280 * 720  # the largest trained frame
STOP_GRACE_S = 10.0


class QueueFull(Exception):
    """As many jobs wait as the queue holds."""


class Unavailable(Exception):
    """The worker could not load, or died too often: no job will run until the server is restarted."""


@dataclass(frozen=True)
class JobRequest:
    id: str
    prompt: str
    negative_prompt: str | None  # None: the converged run's
    width: int
    height: int
    frames: int
    fps: int
    seed: int
    steps: int | None  # None: the converged configuration's
    guidance_scale: float | None
    guidance_scale_2: float | None
    flow_shift: float | None
    output: str  # absolute path of the .mp4 the worker writes (whole or not at all)


class Engine:
    def __init__(self, run_dir: Path, on_event: Callable[[dict], None], queue_size: int = 8):
        self.run_dir, self.on_event, self.queue_size = run_dir, on_event, queue_size
        self.folder = run_dir / "serve"
        config, book = runs.converged_config(run_dir.name, run_dir.parent, None, self.folder / "worker")
        # A configuration converged over several GPUs is served by a torchrun group of as many ranks (worker.py).
        self.config, self.ranks = config, parallel.world_size(config.knobs)
        self.config_file = self.folder / "worker" / "serve-config.json"
        self.config_file.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.config_file, self.config.model_dump_json(indent=1))
        environments = (read_json(run_dir / "run.json") or {}).get("runtimes")
        runtime = self.config.knobs.runtime
        self.python, self.runtime_vars = trials.interpreter(environments, runtime), trials.runtime_env(environments, runtime)
        self.model = str((read_json(run_dir / "run.json") or {}).get("model", {}).get("spec") or self.config.model_path)
        self._lock = threading.Lock()
        self._waiting: deque[JobRequest] = deque()
        self._running: str | None = None
        self._proc: subprocess.Popen | None = None
        self._ready, self._why, self._stopping = False, "starting: the worker has not been started", False
        self._gave_up, self._load_error = False, ""
        self._restarts, self._last_report, self._stalled = 0, time.monotonic(), ""
        self._multiple = 16
        self.idle_timeout_s = float(book["timeouts"]["idle_timeout_s"])

    def defaults(self) -> dict:
        work, knobs = self.config.workload, self.config.knobs
        return {
            "model": self.model,
            **work.model_dump(exclude={"prompt"}),
            **knobs.model_dump(include={"steps", "guidance_scale", "guidance_scale_2", "flow_shift"}),
            "max_prompt_chars": MAX_PROMPT_CHARS,
            "max_width": max(MAX_SIDE, work.width),
            "max_height": max(MAX_SIDE, work.height),
            "max_frames": MAX_FRAMES,
            "max_pixels": max(MAX_PIXELS, work.width * work.height),
            "multiple": self._multiple,  # 16 until the worker says (the 5B's VAE and patch make it 32)
        }

    def start(self) -> None:
        threading.Thread(target=self._supervise, name="serve-worker", daemon=True).start()
        threading.Thread(target=self._watch, name="serve-watchdog", daemon=True).start()

    def _watch(self) -> None:
        """A job with no report for the playbook's idle timeout (a hung kernel, a stuck encoder) ends the worker: the
        crash path fails the job with the reason and starts another worker."""
        while not self._stopping:
            time.sleep(min(5.0, self.idle_timeout_s / 4))
            with self._lock:
                proc, silent = self._proc, time.monotonic() - self._last_report
                stalled = self._running is not None and silent > self.idle_timeout_s and proc is not None
                if stalled:
                    self._stalled = f"no progress for {silent:.0f} s (idle timeout {self.idle_timeout_s:.0f} s): worker stopped"
            if stalled and proc is not None and proc.poll() is None:
                logger.error("serve worker: %s", self._stalled)
                os.killpg(proc.pid, signal.SIGKILL)

    def ready(self) -> tuple[bool, str]:
        with self._lock:
            return self._ready, self._why

    def submit(self, job: JobRequest) -> None:
        with self._lock:
            if self._gave_up:
                raise Unavailable(self._why)
            if len(self._waiting) >= self.queue_size:
                raise QueueFull(f"{len(self._waiting)} jobs are waiting, as many as the queue holds ({self.queue_size})")
            self._waiting.append(job)
        self._dispatch()

    def cancel(self, job_id: str) -> bool:
        with self._lock:
            found = next((j for j in self._waiting if j.id == job_id), None)
            if found is not None:
                self._waiting.remove(found)
            return found is not None

    def depth(self) -> int:
        with self._lock:
            return len(self._waiting)

    def running(self) -> str | None:
        with self._lock:
            return self._running

    def stop(self) -> None:
        """Let the worker finish reading (its stdin closes), then stop its process group."""
        with self._lock:
            self._stopping, proc = True, self._proc
        if proc is None or proc.poll() is not None:
            return
        try:
            assert proc.stdin is not None
            proc.stdin.close()
            proc.wait(timeout=STOP_GRACE_S)
        except (OSError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def _launch(self) -> subprocess.Popen:
        env = {k: v for k, v in os.environ.items() if tmux.passed(k)} | trials.worker_env(self.run_dir, self.runtime_vars)
        env[PARENT_ENV] = str(os.getpid())  # the worker dies with this server (agent/serve/worker.py)
        with open(self.folder / "worker.log", "ab") as log:
            return subprocess.Popen([self.python, "-m", "agent.serve.worker", str(self.config_file)], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=log, env=env, cwd=trials.PROJECT_ROOT, text=True,
                                    start_new_session=True)  # fmt: skip

    def _supervise(self) -> None:
        while True:
            with self._lock:
                if self._stopping:
                    return
                self._proc = proc = self._launch()
                self._why = f"loading: {self.config.knobs.describe()} (worker pid {proc.pid}; log {self.folder / 'worker.log'})"
            was_ready = False
            assert proc.stdout is not None
            try:
                for line in proc.stdout:
                    try:
                        was_ready |= self._handle(line)
                    except Exception:  # a report it cannot use, a listener that failed: the worker goes on
                        logger.exception("serve worker report not handled: %.200s", line)
            finally:  # whatever ends the reading, the worker is gone or must go: the crash path below runs
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
            code = proc.wait()
            with self._lock:
                self._ready, cut = False, self._running
                self._running = None
                if self._stopping:
                    return
                self._restarts += was_ready
                restarts = self._restarts
                give_up = self._gave_up = not was_ready or restarts > MAX_RESTARTS
                if not was_ready and self._load_error:
                    self._why = f"failed: the worker could not load the configuration: {self._load_error}"
                elif not was_ready:
                    self._why = f"failed: the worker exited with code {code} while loading; see {self.folder / 'worker.log'}"
                elif give_up and was_ready:
                    self._why = (
                        f"failed: the worker died {restarts} times (last exit code {code}); see {self.folder / 'worker.log'}"
                    )
                elif was_ready:
                    self._why = f"restarting: the worker exited with code {code}"
            if cut is not None:
                why = self._stalled or f"the GPU worker exited (code {code}) during this generation"
                self.on_event({"job": cut, "status": "failed", "code": "worker_crashed", "message": why})
            self._stalled = ""
            logger.warning("serve worker exited with code %s; %s", code, self.ready()[1])
            if give_up:  # nothing will run what waits: each job says why rather than waiting for ever
                with self._lock:
                    orphans, why = list(self._waiting), self._why
                    self._waiting.clear()
                for job in orphans:
                    self.on_event({"job": job.id, "status": "failed", "code": "worker_unavailable", "message": why})
                return

    def _handle(self, line: str) -> bool:
        """One report of the worker; True when it says it is ready."""
        try:
            event = json.loads(line)
        except ValueError:
            event = None
        if not isinstance(event, dict):
            logger.warning("serve worker wrote a line that is not a report: %.200s", line)
            return False
        kind = event.pop("event", None)
        if kind == "ready":
            with self._lock:
                self._ready, self._multiple = True, int(event.get("multiple", 16))
                self._why = (f"ready: {event['label']} on {event['device']} (loaded in {event['load_s']:.1f} s, "
                             f"warm-up clip {event['warmup_s']:.1f} s)")  # fmt: skip
                if self.ranks > 1:
                    self._why += f"; a torchrun group of {self.ranks} ranks, one per GPU"
            logger.info("serve worker %s", self._why)
            self._dispatch()
            return True
        if kind == "load_failed":  # the supervisor says so once the worker has exited, and stops taking jobs then
            with self._lock:
                self._load_error = event["message"]
            return False
        if kind in ("progress", "completed", "failed"):
            if not isinstance(event.get("job"), str):
                raise ValueError(f"a {kind} report names no job")
            self._last_report = time.monotonic()
            if kind == "completed":
                self._restarts = 0  # a worker that generates again has recovered: only crashes in a row count
            status = {"progress": "in_progress"}.get(kind, kind)
            self.on_event({"status": status, **event})
            if kind != "progress":
                with self._lock:
                    self._running = None
                self._dispatch()
        return False

    def _dispatch(self) -> None:
        """Hand the next waiting job to the worker when it is ready and idle."""
        with self._lock:
            if not self._ready or self._running is not None or not self._waiting or self._proc is None:
                return
            job = self._waiting.popleft()
            self._running, self._last_report = job.id, time.monotonic()
            proc = self._proc
        self.on_event({"job": job.id, "status": "in_progress", "progress": 0})
        try:
            assert proc.stdin is not None
            proc.stdin.write(json.dumps(asdict(job)) + "\n")
            proc.stdin.flush()
        except OSError:  # the worker is dying: the supervisor fails this job when it has exited
            logger.warning("serve worker did not take job %s", job.id)
