"""evaluate: judge the finished trial (kept, reverted, failed, rejected) and update the best."""

from __future__ import annotations

import logging

from langgraph.runtime import Runtime

from agent import gates
from agent.decision import confirm, judge
from agent.nodes import journal
from agent.nodes.plan import reference_dir, size
from agent.playbook import Decision
from agent.runtime.config import Measurement
from agent.state import AgentState, RunContext
from agent.telemetry import watched_whole

logger = logging.getLogger(__name__)


def _figures(outcome: dict) -> dict:
    """The figures worth keeping from a trial's outcome (absent when not measured)."""
    result, tele = outcome.get("result") or {}, outcome.get("telemetry") or {}
    figures: dict = {}
    if result.get("status") == "ok":
        summary, memory = result["summary"], result["memory"]
        figures |= {
            k: summary[k] for k in ("generate_s", "spread_s", "text_encode_s", "denoise_s", "vae_decode_s", "step_s", "repeats")
        }
        figures["samples_s"] = summary.get("samples_s") or [summary["generate_s"]]
        figures["predicted"] = bool(summary.get("predicted"))  # probe mode: the clip's time is extrapolated
        for key in ("prediction_error", "vae_decode_from", "steps_from"):
            if key in summary:
                figures[key] = summary[key]
        figures |= {
            "stages": result["stages"],
            "memory": memory,
            "quality": result["quality"],
            "device": result["device"],
            "fidelity": result.get("fidelity") or {},
        }
        figures["peak_memory_GiB"] = memory.get("peak_gpu_allocated_GiB", memory["peak_rss_GiB"])
        figures["peak_memory_kind"] = "GPU allocated" if "peak_gpu_allocated_GiB" in memory else "process RSS"
        figures["setup"] = result.get("setup") or {}
        if "energy_per_clip_J" in summary:  # full mode: the worker's NVML counter over the timed clips
            figures["energy_per_clip_J"] = summary["energy_per_clip_J"]
    figures["telemetry"] = tele
    if "energy_J" in tele and watched_whole(tele):
        figures["trial_energy_J"] = tele["energy_J"]
    return figures


def evaluate(state: AgentState, runtime: Runtime[RunContext]) -> dict:
    candidate, best = state["candidate"], state.get("best")
    assert candidate is not None
    outcome = candidate["outcome"]
    # Through the models, so that a run started under older rules gets today's defaults for what it lacks.
    rules = Decision.model_validate(state["playbook"]["decision"]).model_dump()
    tolerance = Measurement.model_validate(state["playbook"]["measurement"]).probe_tolerance
    same_function = candidate.get("gate") == "fidelity"
    gate = _fidelity_gate(state, candidate, rules) if same_function else None
    if candidate.get("gate") == "confirm":
        assert best is not None  # plan confirms only a winner
        verdict, reason = confirm(outcome, best, tolerance)
    else:
        verdict, reason = judge(outcome, best, rules["min_gain"], gate)
    verdict, reason = _workload_check(verdict, reason, candidate, best, state["playbook"]["workload"])
    keys = ("index", "name", "rung", "hypothesis", "gate", "set", "remediation", "knobs", "workload", "dir")
    record: dict = {k: candidate.get(k) for k in keys}
    record |= {"verdict": verdict, "reason": reason, "session": outcome["session"], **_figures(outcome)}
    if "log_tail" in outcome:
        record["log_tail"] = outcome["log_tail"]
    if outcome.get("reruns"):
        record["reruns"] = outcome["reruns"]
    if candidate.get("gpu_check"):
        record["gpu_check"] = candidate["gpu_check"]
    if gate is not None:
        record["fidelity_gate"] = gate
    baseline = next((t for t in state.get("trials", []) if t["verdict"] == "baseline"), record)
    if "generate_s" in record and "generate_s" in baseline and record["workload"] == baseline["workload"]:
        record["speedup_vs_baseline"] = baseline["generate_s"] / record["generate_s"]
    logger.info("trial %s: %s — %s", candidate["name"], verdict, reason)
    log = journal(state, runtime)
    log.record("decision", key=f"decision:{candidate['name']}", **record)
    log.render()
    update: dict = {"trials": [*state.get("trials", []), record], "candidate": None}
    if verdict in ("baseline", "kept"):
        update["best"] = record
    elif best is not None and verdict in ("confirmed", "unconfirmed"):
        update["best"] = best | {"confirmation": {"trial": record["name"], "verdict": verdict, "reason": reason}}
        if verdict == "confirmed":
            update["best"]["confirmation"]["clip_s"] = record["generate_s"]
    return update


def _fidelity_gate(state: AgentState, candidate: dict, rules: dict) -> dict | None:
    """The same-function check of a finished trial against its reference trial (None if it produced no result)."""
    result = candidate["outcome"].get("result") or {}
    done = state.get("trials", [])
    if result.get("status") != "ok" or state.get("best") is None:
        return None  # no result to check, or it is the baseline
    wanted = candidate.get("reference") or reference_dir(done)  # planned before the reference was recorded
    reference = next((t for t in done if t["dir"] == wanted), None)
    if reference is None:  # never waved through unchecked
        return {"passed": False, "reason": f"no reference trial ({wanted}) to check this same-function rung against"}
    noise = (reference.get("fidelity") or {}).get("noise")
    return gates.check(result.get("fidelity") or {}, noise, candidate["knobs"], reference["knobs"], rules)


def _workload_check(verdict: str, reason: str, candidate: dict, best: dict | None, playbook_workload: dict) -> tuple:
    """A trial at a smaller workload than the best's is not a speed-up; a baseline at one says so loudly."""
    workload = candidate.get("workload") or playbook_workload
    best_workload = (best or {}).get("workload") or playbook_workload
    if best is not None and verdict in ("kept", "reverted", "inconclusive") and workload != best_workload:
        return "changed_workload", (
            f"ran at {size(workload)} instead of {size(best_workload)}: a changed workload, "
            "not a speed-up, so not compared with the best"
        )
    if verdict == "baseline" and workload != playbook_workload:
        return verdict, f"{reason}; CHANGED WORKLOAD: {size(workload)} instead of the playbook's {size(playbook_workload)}"
    return verdict, reason
