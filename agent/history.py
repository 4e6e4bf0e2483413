"""Memory across runs: an index of converged runs keyed by hardware fingerprint (``runs/index.json``), the nearest
known hardware whose best configuration a search on new hardware starts from, and the previous best of this
hardware that a run is compared against when it ends.

The index is derived data: rebuilt from each run's best.yaml and run.json whenever a run converges (and whenever
it is read), so it can never disagree with the runs themselves.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from agent import compare
from agent.compare import SAME_CLIP
from agent.files import read_json, write_json_atomic
from agent.playbook import Playbook
from agent.reuse import read_best

logger = logging.getLogger(__name__)

INDEX_FILE = "index.json"
COMPARISON_FILE = "comparison.json"  # in the run directory
SEED_RUNG = "known-best"

# How far apart two machines are, per feature that differs (the GPU model matters most: a configuration that won
# on it holds its kernels, memory and FP8 support). Memory counts per doubling.
WEIGHTS = {"gpu": 8.0, "gpus": 4.0, "memory_doublings": 4.0, "driver_major": 1.0, "cuda": 1.0, "torch": 2.0,
           "diffusers": 2.0, "cpu": 1.0}  # fmt: skip


def features(record: dict) -> dict:
    """The hardware fingerprint of the index, from a run.json: GPU model and count, memory, driver major, CUDA,
    torch, diffusers (the CPU only where there is no GPU)."""
    hardware, versions = record.get("hardware") or {}, record.get("versions") or {}
    gpus = hardware.get("gpus") or []
    driver = str(gpus[0].get("driver") or "") if gpus else ""
    return {
        "gpu": gpus[0].get("name") if gpus else None,
        "gpus": len(gpus),
        "memory_GiB": gpus[0].get("memory_GiB") if gpus else None,
        "driver_major": driver.split(".")[0] or None,
        "cuda": hardware.get("torch_cuda"),
        "torch": versions.get("torch"),
        "diffusers": versions.get("diffusers"),
        "cpu": None if gpus else f"{hardware.get('cpu')} ({hardware.get('cores')} cores)",
    }


def distance(a: dict, b: dict) -> tuple[float, list[str]]:
    """How far machine ``b`` is from ``a``, and what differs, in words."""
    total, said = 0.0, []
    for key in ("gpu", "gpus", "driver_major", "cuda", "torch", "diffusers", "cpu"):
        if a.get(key) != b.get(key):
            total += WEIGHTS[key]
            said.append(f"{key.replace('_', ' ')} {a.get(key)} -> {b.get(key)}")
    if a.get("memory_GiB") and b.get("memory_GiB") and a["memory_GiB"] != b["memory_GiB"]:
        total += WEIGHTS["memory_doublings"] * abs(math.log2(b["memory_GiB"] / a["memory_GiB"]))
        said.append(f"GPU memory {a['memory_GiB']} -> {b['memory_GiB']} GiB")
    return total, said


def _entry(best_file: Path) -> dict | None:
    best = read_best(best_file)
    record = read_json(best_file.parent / "run.json")
    if best is None or not record:
        return None
    book = record.get("playbook") or {}
    measured = best.get("measured") or {}
    return {
        "run_id": best_file.parent.name,
        "started_at": record.get("started_at"),
        "fingerprint": (record.get("hardware") or {}).get("fingerprint"),
        "features": features(record),
        "playbook": book.get("name"),
        "clip": {k: (book.get("workload") or {}).get(k) for k in SAME_CLIP},
        "model": (record.get("model") or {}).get("spec"),
        "knobs": best["knobs"],
        "generate_s": measured.get("generate_s"),
        "speedup_vs_baseline": measured.get("speedup_vs_baseline"),
        "unresolved": best.get("unresolved") or [],
    }


def converged(runs_dir: Path) -> list[dict]:
    """Every converged run, newest first, read from the runs themselves."""
    if not runs_dir.is_dir():
        return []
    return [e for f in sorted(runs_dir.glob("*/best.yaml"), reverse=True) if (e := _entry(f)) is not None]


def rebuild(runs_dir: Path) -> list[dict]:
    """``converged``, written to ``runs_dir/index.json`` as well (when a run has converged)."""
    entries = converged(runs_dir)
    write_json_atomic(runs_dir / INDEX_FILE, {"runs": entries})
    return entries


def _same_work(entry: dict, book: Playbook) -> bool:
    """The same clip of the same playbook from the same model (synthetic weights are never judged against real ones)."""
    clip = {k: getattr(book.workload, k) for k in SAME_CLIP}
    return entry["playbook"] == book.name and entry["clip"] == clip and entry["model"] == book.model.source


def previous(entries: list[dict], fingerprint: str, book: Playbook, before: str) -> dict | None:
    """The newest converged run of this machine and this playbook's clip, older than run ``before``."""
    return next((e for e in entries if e["run_id"] < before and e["fingerprint"] == fingerprint and _same_work(e, book)), None)


def nearest(entries: list[dict], fingerprint: str, machine: dict, book: Playbook) -> tuple[dict, list[str]] | None:
    """The best of the nearest other hardware that ran this playbook's clip, and what differs from it; None when this
    machine has converged runs of it (it is known hardware) or no other machine has."""
    same_work = [e for e in entries if _same_work(e, book)]
    if any(e["fingerprint"] == fingerprint for e in same_work):
        return None
    ranked = sorted(((distance(e["features"], machine), e) for e in same_work), key=lambda de: (de[0][0], -de[1]["started_at"]))
    if not ranked:
        return None
    (_, said), entry = ranked[0]
    return entry, said


def seed_rung(entry: dict, differs: list[str], book: Playbook) -> dict | None:
    """The known best as a first rung on top of the baseline: its changes to the playbook's baseline, gated as the
    ladder's rungs it contains are (a distilled rung such as Lightning changes the function: reference-free)."""
    baseline = book.baseline.model_dump()
    changes = {k: v for k, v in entry["knobs"].items() if k in baseline and baseline[k] != v}
    if not changes:
        return None
    knobs = entry["knobs"]  # a rung it contains changed some of these, and may have set others to the baseline's values
    contains = [
        r
        for r in book.ladder
        if any(k in changes for k in r.set) and all(knobs.get(k) == v for k, v in r.set.items() if k != "workload")
    ]
    gate = "reference_free" if any(r.gate == "reference_free" for r in contains) else "fidelity"
    where = entry["features"]["gpu"] or entry["features"]["cpu"]
    return {
        "name": SEED_RUNG,
        "hypothesis": f"The best configuration of the nearest known hardware (run {entry['run_id']} on {where}, "
        f"{entry['generate_s']:.3f} s per clip there; this machine differs in {'; '.join(differs) or 'nothing recorded'}): "
        "tried first, then the rest of the ladder on top of whatever wins.",
        "set": changes,
        "gate": gate,
    }


def start_from(runs_dir: Path, book: Playbook, machine_record: dict) -> tuple[dict, dict] | None:
    """On new hardware, the rung that tries the nearest known machine's best first, and what the journal says of it."""
    found = nearest(converged(runs_dir), machine_record["hardware"]["fingerprint"], features(machine_record), book)
    if found is None:
        return None
    entry, differs = found
    rung = seed_rung(entry, differs, book)
    if rung is None:
        return None
    logger.info("new hardware for %s: starting from the best of run %s (differs in %s)", book.name, entry["run_id"],
                "; ".join(differs))  # fmt: skip
    return rung, {"run_id": entry["run_id"], "generate_s": entry["generate_s"], "differs": differs, "set": rung["set"]}


def compare_with_previous(runs_dir: Path, run_id: str, book: Playbook) -> dict | None:
    """This run against the previous converged run of its hardware and clip (compare's report), written to the run's
    comparison.json; None when there is none."""
    entries = rebuild(runs_dir)
    this = next((e for e in entries if e["run_id"] == run_id), None)
    before = previous(entries, this["fingerprint"], book, run_id) if this else None
    if before is None:
        return None
    try:
        report = compare.compare(compare.load(runs_dir, before["run_id"]), compare.load(runs_dir, run_id))
    except Exception as err:  # noqa: BLE001 (an old or damaged record: said, never a crash of the run's end)
        logger.warning("not compared with run %s: %s", before["run_id"], err)
        report = {"a": before["run_id"], "b": run_id, "error": f"{type(err).__name__}: {err}"}
    write_json_atomic(runs_dir / run_id / COMPARISON_FILE, report)
    return report
