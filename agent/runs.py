"""Runs on disk: start one, drive or resume its graph, find a converged one to reuse, generate with it.

One agent drives a run at a time (an flock on ``runs/<id>/.lock``). The initial state is saved in
``start.json`` before the graph starts, so even a run killed before its first checkpoint resumes.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import secrets
import time
from contextlib import contextmanager
from pathlib import Path

import yaml

from agent import sources, trials
from agent.files import read_json, write_json_atomic
from agent.graph import compiled
from agent.journal import Journal
from agent.playbook import Playbook
from agent.runtime.config import LoraFiles, Measurement, TrialConfig, Workload
from agent.state import RunContext

logger = logging.getLogger(__name__)


class RunError(RuntimeError):
    """A run that cannot be started, resumed or used; the message says what to do."""


def context(runs_dir: Path) -> RunContext:
    cache = os.environ.get("WAN_AGENT_CACHE")
    return RunContext(runs_dir=runs_dir, cache_dir=Path(cache) if cache else runs_dir / ".cache")


@contextmanager
def _lock(run_dir: Path):
    with open(run_dir / ".lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunError(f"run {run_dir.name} is being driven by another wan-agent process") from None
        yield


def with_prompt(book: Playbook, prompt: str | None) -> Playbook:
    if prompt is None:
        return book
    workload = Workload.model_validate(book.workload.model_dump() | {"prompt": prompt})
    return book.model_copy(update={"workload": workload})


def start(book: Playbook, runs_dir: Path) -> str:
    """Create the run directory and its initial state; return the run id."""
    run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{book.name}-{secrets.token_hex(2)}"
    run_dir = runs_dir / run_id
    run_dir.mkdir(parents=True)
    state = {
        "run_id": run_id,
        "playbook": book.model_dump(),
        "pending": [r.model_dump() for r in book.ladder],
        "trials": [],
        "best": None,
        "candidate": None,
        "started_at": time.time(),
        "status": "running",
    }
    write_json_atomic(run_dir / "start.json", state)
    Journal(run_dir).record("run_started", key="start", run_id=run_id, playbook=book.name, workload=book.workload.model_dump())
    return run_id


def drive(run_id: str, runs_dir: Path) -> dict:
    """Run the graph for ``run_id`` to its end, from the last checkpoint if there is one; return the final state."""
    run_dir = runs_dir / run_id
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
        app.invoke(None if snapshot.values else initial, config, context=context(runs_dir), durability="sync")
        return app.get_state(config).values


def find_converged(runs_dir: Path, playbook: str, fingerprint: str, workload: dict) -> str | None:
    """The newest converged run of ``playbook`` on this hardware with the same workload (prompt aside)."""

    def shape(w: dict) -> dict:
        return {k: v for k, v in w.items() if k not in ("prompt", "negative_prompt")}

    for best_file in sorted(runs_dir.glob("*/best.yaml"), reverse=True):
        best = yaml.safe_load(best_file.read_text())
        if (
            best.get("playbook") == playbook
            and best.get("hardware_fingerprint") == fingerprint
            and shape(best.get("workload", {})) == shape(workload)
        ):
            return best_file.parent.name
    return None


def latest_converged(runs_dir: Path) -> str:
    found = sorted(runs_dir.glob("*/best.yaml"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise RunError(f"no converged run in {runs_dir}; start one with `wan-agent run --playbook auto`")
    return found[-1].parent.name


def generate(run_id: str, runs_dir: Path, prompt: str) -> Path:
    """Generate ``prompt`` once with the run's best.yaml; return the video's path."""
    run_dir = runs_dir / run_id
    if not (run_dir / "best.yaml").exists():
        raise RunError(f"run {run_id!r} has no best.yaml (not converged); resume it with `wan-agent resume {run_id}`")
    best = yaml.safe_load((run_dir / "best.yaml").read_text())
    book = read_json(run_dir / "start.json")["playbook"]  # type: ignore[index]
    files = sources.resolve(best["model"]["spec"], context(runs_dir).cache_dir, seed=book["model"]["seed"])
    slug = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:32] or "prompt"
    generations = run_dir / "generations"
    index = len(list(generations.iterdir())) if generations.exists() else 0
    out_dir = generations / f"{index:02d}-{slug}"
    knobs = best["knobs"]
    config = TrialConfig(
        name=out_dir.name,
        model_path=files.path,
        model_seed=book["model"]["seed"],
        device=best["device"],
        lora=LoraFiles(**files.lora) if knobs["lightning"] and files.lora else None,
        workload=Workload.model_validate(best["workload"] | {"prompt": prompt}),
        knobs=knobs,
        measurement=Measurement(warmup=0, repeats=1),
        output_dir=str(out_dir),
    )
    trials.prepare(out_dir, config)
    logger.info("generating with %s (best of run %s)", config.knobs.describe(), run_id)
    timeouts = book["timeouts"]
    outcome = trials.execute(run_id, out_dir, timeouts["deadline_s"], timeouts["idle_timeout_s"])
    result = outcome["result"] or {}
    if result.get("status") != "ok":
        session = outcome["session"]
        raise RunError(f"generation failed ({session['outcome']}, exit {session['exit_code']}); see {out_dir / 'stdout.log'}")
    return out_dir / "video.mp4"
