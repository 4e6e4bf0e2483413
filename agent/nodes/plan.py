"""plan: pick the next trial (the baseline first, then the next rung on top of the current best, and, after a
search in probe mode, one full clip of the winner) and write its trial.json. Rungs that cannot run or change
nothing are skipped, with the reason recorded. After the baseline, each trial's repeat count comes from the
noise the baseline's repeats showed."""

from __future__ import annotations

import logging
from typing import Any

from langgraph.runtime import Runtime

from agent import trials
from agent.capabilities import cannot_run
from agent.carry import carried_calibration, carried_decode, carried_steps
from agent.decision import repeats_for, samples
from agent.files import check_room
from agent.nodes import journal, run_dir
from agent.playbook import Playbook
from agent.runtime.config import Knobs, LoraFiles, Measurement, TrialConfig, Workload
from agent.state import AgentState, RunContext

logger = logging.getLogger(__name__)

BASELINE: dict[str, Any] = {
    "name": "baseline",
    "set": {},
    "gate": "reference_free",
    "hypothesis": "The playbook's baseline configuration: the reference every rung is measured and judged against.",
}


CONFIRM: dict[str, Any] = {
    "name": "confirm",
    "set": {},
    "gate": "confirm",
    "hypothesis": "Probe mode predicted the winner's clip from a few steps of each expert; one whole clip, "
    "timed after a warm-up, confirms the prediction (or shows where it was wrong).",
}


def measurement_for(book: Playbook, done: list[dict], rung: dict) -> tuple[Measurement, str, bool]:
    """How the trial is timed, why so, and whether the host is too noisy for the most repeats allowed."""
    m = book.measurement
    if rung is CONFIRM:
        return m.model_copy(update={"mode": "full", "repeats": 1}), "one full clip after the warm-up", False
    baseline = next((t for t in done if t["verdict"] == "baseline"), None)
    key = "probe_steps" if m.mode == "probe" else "repeats"
    if baseline is None:
        return m, f"{key} {getattr(m, key)}, as the playbook sets for the baseline", False
    k, why, too_noisy = repeats_for(samples(baseline), book.decision.min_gain, m.fewest, m.most)
    return m.model_copy(update={key: k}), f"{key} {k}: {why}", too_noisy


def needs_confirmation(state: AgentState) -> bool:
    """A search in probe mode ends with one full clip of its winner."""
    done, best = state.get("trials", []), state.get("best")
    probe = state["playbook"]["measurement"]["mode"] == "probe"
    return probe and best is not None and not any(t["rung"] == "confirm" for t in done)


def _knob_changes(rung: dict) -> dict:
    return {k: v for k, v in rung["set"].items() if k != "workload"}


def size(workload: dict) -> str:
    return f"{workload['width']}×{workload['height']}, {workload['frames']} frames"


def _changed(playbook_workload: Workload, workload: Workload) -> dict | None:
    """From what to what the work changed, when a remediation fell back to a smaller workload."""
    if workload == playbook_workload:
        return None
    return {"from": size(playbook_workload.model_dump()), "to": size(workload.model_dump())}


def trial_bytes(work: Workload) -> int:
    """The most one trial writes: the clip as frames.npy and as video (no larger), logs, telemetry and JSON."""
    return 2 * work.frames * work.height * work.width * 3 + 8 * 2**20


def reference_dir(done: list[dict]) -> str:
    """Where the function the best computes was last set: the newest kept trial of a rung that changes the
    function (the baseline, or a distilled rung such as Lightning). Same-function rungs are checked against it:
    after Lightning, the baseline's transformer computes a different function."""
    return next(t["dir"] for t in reversed(done) if t["verdict"] in ("baseline", "kept") and t["gate"] == "reference_free")


def _skip_reason(knobs: Knobs, best_knobs: dict, state: AgentState, new_workload: bool) -> str | None:
    if knobs.model_dump() == best_knobs and not new_workload:
        return "changes nothing on top of the current best"
    if knobs.lightning and not state["model"].get("lightning"):
        return f"needs the Lightning LoRA, and source {state['model']['spec']} has none"
    environment = (state.get("runtimes") or {}).get(knobs.runtime) or {}
    if "error" in environment:
        return f"runtime {knobs.runtime}: its environment could not be made ({environment['error']})"
    return cannot_run(knobs, state["hardware"], state["playbook"]["device"])


def baseline_knobs(state: AgentState, book: Playbook) -> Knobs:
    """The playbook's baseline, on the attention backend patch chose for this machine."""
    backend = (state.get("attention") or {}).get("backend", book.baseline.attention)
    return book.baseline.model_copy(update={"attention": backend})


def plan(state: AgentState, runtime: Runtime[RunContext]) -> dict:
    book = Playbook.model_validate(state["playbook"])
    done, pending = state.get("trials", []), list(state.get("pending", []))
    log = journal(state, runtime)
    best = state.get("best")
    # Until a baseline succeeds (a remediated baseline), rungs apply on top of the playbook's baseline.
    best_knobs: dict = best["knobs"] if best else baseline_knobs(state, book).model_dump()
    if not done:
        rung, knobs = BASELINE, baseline_knobs(state, book)
        reason = cannot_run(knobs, state["hardware"], book.device)
        if reason is not None:  # no baseline, so no run: report says why
            logger.error("the baseline cannot run here: %s", reason)
            log.record("rung_skipped", key="skipped:baseline", rung="baseline", reason=reason)
            return {"candidate": None, "pending": []}
    else:
        while True:
            if not pending:
                if not needs_confirmation(state):
                    return {"candidate": None, "pending": []}
                rung, knobs = CONFIRM, Knobs.model_validate(best_knobs)
                break
            rung = pending.pop(0)
            knobs = Knobs.model_validate(best_knobs | _knob_changes(rung))
            reason = _skip_reason(knobs, best_knobs, state, "workload" in rung["set"])
            if reason is None:
                break
            logger.info("rung %s skipped: %s", rung["name"], reason)
            log.record("rung_skipped", key=f"skipped:{rung['name']}", rung=rung["name"], reason=reason)
    index = len(done)
    name = f"{index:02d}-{rung['name']}"
    # The best's workload (a remediated baseline may have fallen back to a smaller one), then the rung's own fallback.
    workload = Workload.model_validate(
        ((best or {}).get("workload") or book.workload.model_dump()) | rung["set"].get("workload", {})
    )
    check_room(run_dir(state, runtime), trial_bytes(workload))  # stop cleanly here rather than mid-trial
    measurement, measurement_why, too_noisy = measurement_for(book, done, rung)
    reference = reference_dir(done) if best and rung.get("gate", "fidelity") == "fidelity" else None
    if too_noisy:
        logger.warning("trial %s: %s", name, measurement_why)
    trial_dir = run_dir(state, runtime) / "trials" / name
    model = state["model"]
    config = TrialConfig(
        name=name,
        model_path=model["path"],
        device=book.device,
        workload=workload,
        knobs=knobs,
        model_seed=book.model.seed,
        lora=LoraFiles(**model["lora"]) if knobs.lightning and model["lora"] else None,
        measurement=measurement,
        output_dir=str(trial_dir),
        reference_dir=reference,
        gpu_memory_fraction=book.limits.gpu_memory_fraction,
        host_memory_GiB=book.limits.host_memory_GiB,
        decode_carried=carried_decode(best, knobs, measurement, workload),
        steps_carried=carried_steps(best, knobs, measurement, workload, judged=reference is not None),
        calibration_carried=carried_calibration(best, knobs, workload),
    )
    trials.prepare(trial_dir, config)
    change = {k: [best_knobs.get(k), v] for k, v in knobs.model_dump().items() if best_knobs.get(k) != v} if done else {}
    logger.info("trial %s: %s", name, rung["hypothesis"])
    log.record(
        "trial_planned",
        key=f"planned:{name}",
        trial=name,
        rung=rung["name"],
        hypothesis=rung["hypothesis"],
        knobs=knobs.model_dump(),
        label=knobs.describe(),
        change=change,
        measurement=measurement.model_dump(),
        measurement_why=measurement_why,
        too_noisy=too_noisy,
        **({"workload_changed": changed_workload} if (changed_workload := _changed(book.workload, workload)) else {}),
    )
    return {
        "pending": pending,
        "candidate": {
            "index": index,
            "name": name,
            "rung": rung["name"],
            "hypothesis": rung["hypothesis"],
            "gate": rung.get("gate", "fidelity"),
            "set": rung["set"],
            "remediation": rung.get("remediation"),
            "knobs": knobs.model_dump(),
            "workload": workload.model_dump(),
            "dir": str(trial_dir),
            "reference": reference,
        },
    }
