"""report: the run has converged (or failed); write best.yaml, the final journal and report.html."""

from __future__ import annotations

import logging
import time

import yaml
from langgraph.runtime import Runtime

from agent import history, reuse
from agent.decision import UNRESOLVED
from agent.files import write_text_atomic
from agent.journal import Journal
from agent.nodes import journal, run_dir
from agent.playbook import Playbook
from agent.report import html
from agent.state import AgentState, RunContext

logger = logging.getLogger(__name__)


def best_config(state: AgentState) -> dict:
    """What `wan-agent generate` needs to reproduce the winner, and what it was measured at."""
    best, book = state["best"], state["playbook"]
    assert best is not None
    changed = best.get("workload", book["workload"]) != book["workload"]
    return {
        "run_id": state["run_id"],
        "playbook": book["name"],
        "hardware_fingerprint": state["hardware"]["fingerprint"],
        "reuse_key": reuse.key(book, state["hardware"], state["environment"]),
        "device": book["device"],
        "model": state["model"],
        "workload": best.get("workload") or book["workload"],
        # remediation's last resort ran the work smaller: what the playbook asked for
        **({"workload_changed_from": book["workload"]} if changed else {}),
        "knobs": best["knobs"],
        "measured": {
            k: best.get(k)
            for k in ("name", "generate_s", "spread_s", "speedup_vs_baseline", "peak_memory_GiB", "energy_per_clip_J")
            if best.get(k) is not None
        }
        | {"on": best.get("device")}
        | ({"confirmation": best["confirmation"]} if "confirmation" in best else {})
        | ({"shared_gpu": best["gpu_check"]} if (best.get("gpu_check") or {}).get("shared") else {}),
        # Verdicts the host's noise left open: `run --reuse` measures again rather than trust this run.
        "unresolved": [t["name"] for t in state.get("trials", []) if t["verdict"] in UNRESOLVED],
    }


def _compare_with_previous(state: AgentState, runtime: Runtime[RunContext], log: Journal) -> None:
    """A run of hardware that converged before is judged against that run, as `wan-agent compare best RUN` would."""
    found = history.compare_with_previous(runtime.context.runs_dir, state["run_id"], Playbook.model_validate(state["playbook"]))
    if found is None:
        return
    if "error" in found:
        log.record("compared", key="compared", a=found["a"], error=found["error"])
        return
    said = ", ".join(found["regressions"]) or "none"
    logger.info("against the previous best of this hardware (run %s): regressions beyond noise: %s", found["a"], said)
    keep = ("a", "converged", "regressions", "differences", "min_gain")
    log.record("compared", key="compared", **{k: found[k] for k in keep})


SETUP_STAGES = ("load_s", "lora_fuse_s", "prepare_s", "first_forwards_s", "vae_compile_s")


def search_cost(trials: list[dict], elapsed_s: float) -> dict:
    """Where the search's time went: in trials (setting up: loading, quantizing, compiling; measuring: the rest of each
    trial's session) and between them (the agent's planning, gates and journal; waits for a busy GPU)."""
    setups = {t["name"]: sum((t.get("stages") or {}).get(k, 0.0) for k in SETUP_STAGES) for t in trials}
    in_trials = sum(((t.get("session") or {}).get("wall_s") or 0.0) for t in trials)
    costliest = max(setups, key=lambda name: setups[name], default=None)
    return {
        "total_s": elapsed_s,
        "trials_s": in_trials,
        "setup_s": sum(setups.values()),
        "measuring_s": in_trials - sum(setups.values()),
        "between_trials_s": max(0.0, elapsed_s - in_trials),  # a session's start is known to the second (tmux)
        "costliest_setup": {"trial": costliest, "s": setups[costliest]} if costliest else None,
    }


def report(state: AgentState, runtime: Runtime[RunContext]) -> dict:
    winner = state.get("best")
    status = "failed" if state.get("status") == "failed" or not winner else "converged"
    elapsed = time.time() - state["started_at"]
    trials = state.get("trials", [])
    fields = {"status": status, "time_to_converge_s": elapsed, "trial_count": len(trials), "cost": search_cost(trials, elapsed)}
    if winner is not None and status == "converged":
        best = best_config(state)
        write_text_atomic(run_dir(state, runtime) / "best.yaml", yaml.safe_dump(best, sort_keys=False))
        fields |= {"best": winner["name"], "knobs": winner["knobs"], "unresolved": best["unresolved"]}
        logger.info("converged after %d trials in %.0f s: best is %s", len(trials), elapsed, winner["name"])
    else:
        logger.error("run failed: no baseline measurement; see %s", run_dir(state, runtime) / "journal.md")
    log = journal(state, runtime)
    if status == "converged":
        _compare_with_previous(state, runtime, log)
    log.record("converged" if status == "converged" else "run_failed", key="end", **fields)
    log.render()
    try:  # a view of the run: the run's outcome stands without it
        logger.info("report: %s", html.write(run_dir(state, runtime)))
    except Exception as err:  # noqa: BLE001
        logger.warning("report.html could not be written (%s); `wan-agent report %s` tries again", err, state["run_id"])
    return {"status": status, "unresolved": fields.get("unresolved", [])}
