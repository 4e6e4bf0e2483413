"""Runs on disk: start one, drive or resume its graph, find a converged one to reuse, generate with it.

One agent drives a run at a time (an flock on ``runs/<id>/.lock``, which names its pid for ``stop``). The
initial state is saved in ``start.json`` before the graph starts, so even a run killed before its first
checkpoint resumes.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import secrets
import signal
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import psutil
import yaml

from agent import gpu_map, hardware, sources, tmux, trial_host, trials
from agent.capabilities import cannot_run
from agent.files import read_json, write_json_atomic
from agent.graph import compiled
from agent.journal import Journal
from agent.playbook import Playbook
from agent.runtime import parallel
from agent.runtime.config import LoraFiles, Measurement, TrialConfig, Workload
from agent.state import RunContext

logger = logging.getLogger(__name__)


class RunError(RuntimeError):
    """A run that cannot be started, resumed or used; the message says what to do."""


def context(runs_dir: Path) -> RunContext:
    cache = os.environ.get("WAN_AGENT_CACHE")
    return RunContext(runs_dir=runs_dir, cache_dir=Path(cache) if cache else runs_dir / ".cache")


RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def path_of(runs_dir: Path, run_id: str) -> Path:
    """The directory of run ``run_id``, refusing an id that is not a plain name (``../x``, ``a/b``)."""
    if not RUN_ID.match(run_id) or ".." in run_id:
        raise RunError(f"{run_id!r} is not a run id (letters, digits, '.', '_', '-'); `ls {runs_dir}` lists the runs")
    return runs_dir / run_id


@contextmanager
def _lock(run_dir: Path):
    """Held while an agent drives the run; the file names that agent's pid, for `wan-agent stop`."""
    with open(run_dir / ".lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunError(f"run {run_dir.name} is being driven by another wan-agent process") from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        yield


def driver_pid(run_dir: Path, tries: int = 20) -> int | None:
    """The pid of the wan-agent process driving the run, or None when none holds its lock. The pid is written just
    after the lock is taken: an empty or stale file is read again, and a pid that is not a wan-agent is not trusted."""
    for _ in range(tries):
        try:
            with open(run_dir / ".lock", "a+") as f:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    f.seek(0)
                    text = f.read().strip()
                    if text.isdigit() and _is_agent(int(text)):
                        return int(text)
                else:
                    return None
        except FileNotFoundError:
            return None
        time.sleep(0.1)
    raise RunError(f"run {run_dir.name} is locked by a process that is not a wan-agent, or whose pid cannot be read")


def _is_agent(pid: int) -> bool:
    try:
        command = " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return False
    return "agent.cli" in command or "wan-agent" in command


def stop(run_id: str, runs_dir: Path, wait_s: float = 60.0) -> list[str]:
    """Stop run ``run_id``: interrupt the agent driving it (it stops its trial and exits; resume continues), then
    kill any trial session of the run still alive. Returns what was stopped, in words."""
    directory = path_of(runs_dir, run_id)
    if not (directory / "start.json").exists():
        raise RunError(f"no run {run_id!r} in {runs_dir}; `ls {runs_dir}` lists the runs")
    stopped = []
    pid = driver_pid(directory)
    if pid is not None:
        os.kill(pid, signal.SIGINT)
        deadline = time.monotonic() + wait_s
        while driver_pid(directory) is not None and time.monotonic() < deadline:
            time.sleep(0.2)
        if driver_pid(directory) is not None:
            os.kill(pid, signal.SIGKILL)
        stopped.append(f"the agent (pid {pid})")
    if trial_host.stop(run_id, directory, wait_s=5.0):
        stopped.append(f"trial host {trial_host.session(run_id)}")
    for folder in ("trials", "generations"):
        for trial in sorted((directory / folder).glob("*")):
            session = tmux.session_name(run_id, trial.name)
            if tmux.is_running(session):
                tmux.kill(session)
                stopped.append(f"trial session {session}")
    return stopped


def with_prompt(book: Playbook, prompt: str | None) -> Playbook:
    if prompt is None:
        return book
    workload = Workload.model_validate(book.workload.model_dump() | {"prompt": prompt})
    return book.model_copy(update={"workload": workload})


def start(book: Playbook, runs_dir: Path, chosen_because: str = "", start_from: tuple[dict, dict] | None = None) -> str:
    """Create the run directory and its initial state; return the run id. ``start_from``: a rung tried before the
    ladder (the nearest known hardware's best, agent/history.py) and what the journal says of it."""
    run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{book.name}-{secrets.token_hex(2)}"
    run_dir = runs_dir / run_id
    run_dir.mkdir(parents=True)
    state = {
        "run_id": run_id,
        "playbook": book.model_dump(),
        "pending": [*([start_from[0]] if start_from else []), *(r.model_dump() for r in book.ladder)],
        "trials": [],
        "best": None,
        "candidate": None,
        "started_at": time.time(),
        "status": "running",
    }
    write_json_atomic(run_dir / "start.json", state)
    Journal(run_dir).record(
        "run_started",
        key="start",
        run_id=run_id,
        playbook=book.name,
        chosen_because=chosen_because,
        source=book.model.source,
        weights=sources.weights_of(book.model.source),
        workload=book.workload.model_dump(),
        **({"start_from": start_from[1]} if start_from else {}),
    )
    return run_id


def drive(run_id: str, runs_dir: Path) -> dict:
    """Run the graph for ``run_id`` to its end, from the last checkpoint if there is one; return the final state."""
    run_dir = path_of(runs_dir, run_id)
    initial = read_json(run_dir / "start.json")
    if initial is None:
        raise RunError(f"no run {run_id!r} in {runs_dir} (no start.json); `ls {runs_dir}` lists the runs")
    config = {"configurable": {"thread_id": run_id}}
    with _lock(run_dir), compiled(run_dir) as app:
        snapshot = app.get_state(config)
        if snapshot.values and not snapshot.next:
            logger.info("run %s already finished (%s)", run_id, snapshot.values.get("status"))
            return snapshot.values
        if snapshot.values:
            logger.info("resuming run %s before %s", run_id, ", ".join(snapshot.next))
        try:
            if not snapshot.values:
                book = Playbook.model_validate(initial["playbook"])
                trial_host.start_early(run_id, run_dir, book, sys.executable, trials.worker_env(run_dir, {}))
            app.invoke(None if snapshot.values else initial, config, context=context(runs_dir), durability="sync")
        finally:  # however the graph stopped: the GPU is given back (a resume starts the host again)
            trial_host.stop(run_id, run_dir)
        return app.get_state(config).values


def latest_converged(runs_dir: Path) -> str:
    found = sorted(runs_dir.glob("*/best.yaml"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise RunError(f"no converged run in {runs_dir}; start one with `wan-agent run --playbook auto`")
    return found[-1].parent.name


def _benchmarked_files(model: dict) -> sources.ModelFiles | None:
    """The very files the run measured, when they are still on disk: a hub's branch may have moved since (the
    Lightning repo follows `main`), and generating needs no network then."""
    path, lora = Path(model.get("path", "")), model.get("lora") or {}
    if not (path / "model_index.json").is_file() or not all(Path(p).is_file() for p in lora.values()):
        return None
    return sources.ModelFiles(spec=model["spec"], path=str(path), lora=lora or None, lightning=bool(lora))


def converged_config(run_id: str, runs_dir: Path, prompt: str | None, out_dir: Path) -> tuple[TrialConfig, dict]:
    """The TrialConfig that generates ``prompt`` (default: the playbook's) with a run's best.yaml into ``out_dir``, and
    the run's playbook as resolved."""
    run_dir = path_of(runs_dir, run_id)
    if not (run_dir / "best.yaml").exists():
        raise RunError(f"run {run_id!r} has no best.yaml (not converged); resume it with `wan-agent resume {run_id}`")
    best = yaml.safe_load((run_dir / "best.yaml").read_text())
    if not isinstance(best, dict) or not isinstance(best.get("knobs"), dict):
        raise RunError(f"{run_dir / 'best.yaml'} is empty or malformed; `wan-agent resume {run_id}` writes it again")
    book = read_json(run_dir / "start.json")["playbook"]  # type: ignore[index]
    files = _benchmarked_files(best["model"]) or sources.resolve(
        best["model"]["spec"], context(runs_dir).cache_dir, seed=book["model"]["seed"]
    )
    knobs = best["knobs"]
    config = TrialConfig(
        name=out_dir.name,
        model_path=files.path,
        model_seed=book["model"]["seed"],
        device=best["device"],
        lora=LoraFiles(**files.lora) if knobs["lightning"] and files.lora else None,
        workload=Workload.model_validate(best["workload"] | ({"prompt": prompt} if prompt is not None else {})),
        knobs=knobs,
        measurement=Measurement(warmup=0, repeats=1),
        output_dir=str(out_dir),
    )
    return config, book


def generate(run_id: str, runs_dir: Path, prompt: str) -> Path:
    """Generate ``prompt`` once with the run's best.yaml; return the video's path."""
    run_dir = path_of(runs_dir, run_id)
    slug = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:32] or "prompt"
    generations = run_dir / "generations"
    index = len(list(generations.iterdir())) if generations.exists() else 0
    out_dir = generations / f"{index:02d}-{slug}"
    config, book = converged_config(run_id, runs_dir, prompt, out_dir)
    machine = hardware.probe()
    if (reason := cannot_run(config.knobs, machine, config.device)) is not None:  # e.g. a 4-GPU best on 2 GPUs
        raise RunError(f"run {run_id}'s best cannot run on this machine: {reason}; converge a run here (`wan-agent run`)")
    trials.prepare(out_dir, config)
    logger.info("generating with %s (best of run %s)", config.knobs.describe(), run_id)
    timeouts = book["timeouts"]
    environments = (read_json(run_dir / "run.json") or {}).get("runtimes")
    runtime = config.knobs.runtime
    python, runtime_vars = trials.interpreter(environments, runtime), trials.runtime_env(environments, runtime)
    gpus = gpu_map.for_ranks(machine, parallel.world_size(config.knobs))  # torchrun's ranks, each on its GPU, all watched
    outcome = trials.execute(run_id, out_dir, timeouts["deadline_s"], timeouts["idle_timeout_s"], gpu=gpus, python=python,
                             runtime_vars=runtime_vars)  # fmt: skip
    result = outcome["result"] or {}
    if result.get("status") != "ok":
        session = outcome["session"]
        raise RunError(f"generation failed ({session['outcome']}, exit {session['exit_code']}); see {out_dir / 'stdout.log'}")
    return out_dir / "video.mp4"
