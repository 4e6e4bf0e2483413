"""Runs side by side: `wan-agent runs` lists them, `wan-agent compare A B` says whether B regressed against A.

Each rung both runs measured, and the converged clip, is judged by the rule keep/revert uses (agent/stats.py on the
timed repeats of both, the bar being B's playbook's ``decision.min_gain``): ``slower`` (a regression) only when B
measured slower by more than the bar and the interval of the difference holds no speed-up; ``inconclusive`` when it
measured slower by the bar but the noise of the two runs cannot tell; ``faster`` and ``same`` likewise. Runs whose
workload differs (size, frames, seed: a different clip) cannot be compared.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from agent import stats
from agent.decision import samples
from agent.files import read_json
from agent.journal import read_events
from agent.reuse import SPEED_PACKAGES, read_best

JUDGED = ("baseline", "kept", "reverted", "inconclusive", "confirmed", "unconfirmed", "rejected")
SAME_CLIP = ("height", "width", "frames", "seed", "fps")  # the prompt aside: a trial's cost does not depend on it


class CannotCompare(ValueError):
    """Bad input, or two runs whose figures do not measure the same thing; the message says which and why."""


@dataclass
class Run:
    id: str
    dir: Path
    record: dict  # run.json
    events: list[dict]  # journal.jsonl
    best: dict | None  # best.yaml, once converged

    def decisions(self) -> dict[str, dict]:
        """The last measured decision of each rung (a remediated rung's retry replaces its failure)."""
        found: dict[str, dict] = {}
        for e in self.events:
            if e["kind"] == "decision" and e.get("verdict") in JUDGED and e.get("generate_s"):
                found[e["rung"]] = e
        return found

    def status(self) -> str:
        end = next((e for e in reversed(self.events) if e["kind"] in ("converged", "run_failed")), None)
        if end is not None:
            return str(end.get("status", "converged"))
        return "stopped before converging" if self.events else "not started"


def load(runs_dir: Path, run_id: str) -> Run:
    run_dir = runs_dir / run_id
    if not (run_dir / "run.json").is_file():
        raise CannotCompare(f"no run {run_id!r} in {runs_dir} (`wan-agent runs` lists them)")
    best = read_best(run_dir / "best.yaml") if (run_dir / "best.yaml").is_file() else None
    return Run(run_id, run_dir, read_json(run_dir / "run.json") or {}, read_events(run_dir / "journal.jsonl"), best)


def newest_best(runs_dir: Path, fingerprint: str, before: str | None = None) -> str:
    """The newest converged run of this hardware fingerprint (older than run ``before``, when given)."""
    for best_file in sorted(runs_dir.glob("*/best.yaml"), reverse=True):
        run_id = best_file.parent.name
        if before is not None and run_id >= before:
            continue
        if (read_best(best_file) or {}).get("hardware_fingerprint") == fingerprint:
            return run_id
    raise CannotCompare(f"no converged run of this hardware ({fingerprint}) in {runs_dir}")


def _hardware(record: dict) -> str:
    gpus = record.get("hardware", {}).get("gpus") or []
    if not gpus:
        return f"CPU ({record.get('hardware', {}).get('cores', '?')} cores)"
    return f"{len(gpus)} x {gpus[0]['name']}" if len(gpus) > 1 else gpus[0]["name"]


def _when(started: float | None) -> str | None:
    return datetime.fromtimestamp(started, UTC).strftime("%Y-%m-%d %H:%M UTC") if started else None


def listing(runs_dir: Path) -> list[dict]:
    """Every run, newest first: id, when, hardware, model source, playbook, status, best time, speed-up."""
    rows = []
    for run_json in sorted(runs_dir.glob("*/run.json"), reverse=True):
        run = load(runs_dir, run_json.parent.name)
        measured = (run.best or {}).get("measured") or {}
        model = run.record.get("model") or {}
        rows.append({
            "id": run.id,
            "started": _when(run.record.get("started_at")),
            "hardware": _hardware(run.record),
            "source": f"{model.get('spec', '?')} ({model.get('weights', '?')})",
            "playbook": (run.record.get("playbook") or {}).get("name"),
            "status": run.status(),
            "best_s": measured.get("generate_s"),
            "speedup": measured.get("speedup_vs_baseline"),
        })  # fmt: skip
    return rows


def _verdict(a: dict, b: dict, bar: float) -> tuple[str, str]:
    g = stats.gain(samples(a), samples(b))  # the time B saves against A
    said = f"time saved {g.describe()}"
    if g.point <= -bar and g.high < 0:
        return "slower", said
    if g.point <= -bar:
        return "inconclusive", said + ": measured slower, but the noise of the two runs cannot tell"
    if g.point >= bar and g.low > 0:
        return "faster", said
    return "same", said


def _row(name: str, a: dict, b: dict, bar: float) -> dict:
    verdict, why = _verdict(a, b, bar)
    row = {"rung": name, "a_s": a["generate_s"], "b_s": b["generate_s"], "ratio": b["generate_s"] / a["generate_s"]}
    if bool(a.get("predicted")) != bool(b.get("predicted")):
        why += "; one was predicted from probe-mode steps, the other timed whole"
    return row | {"verdict": verdict, "why": why}


def differences(a: Run, b: Run) -> list[str]:
    said = []
    prints = [r.record.get("hardware", {}).get("fingerprint") for r in (a, b)]
    if prints[0] != prints[1]:
        said.append(f"hardware: {_hardware(a.record)} ({prints[0]}) -> {_hardware(b.record)} ({prints[1]})")
    gpu: list[dict] = [next(iter(r.record.get("hardware", {}).get("gpus") or []), {}) for r in (a, b)]
    for field in ("driver", "driver_cuda"):
        if gpu[0].get(field) != gpu[1].get(field):
            said.append(f"{field.replace('_', ' ')}: {gpu[0].get(field)} -> {gpu[1].get(field)}")
    versions = [r.record.get("versions") or {} for r in (a, b)]
    for package in sorted(set(versions[0]) | set(versions[1])):
        if versions[0].get(package) != versions[1].get(package):
            speed = " (sets the speed)" if package in SPEED_PACKAGES else ""
            said.append(f"{package}: {versions[0].get(package)} -> {versions[1].get(package)}{speed}")
    knobs = [(r.best or {}).get("knobs") or {} for r in (a, b)]
    changed = [f"{k} {knobs[0].get(k)} -> {knobs[1].get(k)}" for k in knobs[1] if knobs[0].get(k) != knobs[1].get(k)]
    if changed:
        said.append("converged configuration: " + ", ".join(changed))
    models = [(r.record.get("model") or {}).get("spec") for r in (a, b)]
    if models[0] != models[1]:
        said.append(f"model: {models[0]} -> {models[1]}")
    return said


def compare(a: Run, b: Run) -> dict:
    """Both runs' figures per rung and for the converged clip, a verdict for each, and what differs."""
    work = [(r.record.get("playbook") or {}).get("workload") or {} for r in (a, b)]
    clip = [{k: w.get(k) for k in SAME_CLIP} for w in work]
    if clip[0] != clip[1]:
        raise CannotCompare(f"runs {a.id} and {b.id} measure different clips ({clip[0]} vs {clip[1]}): not comparable")
    bar = float(((b.record.get("playbook") or {}).get("decision") or {}).get("min_gain", 0.02))
    da, db = a.decisions(), b.decisions()
    rows = [_row(name, da[name], db[name], bar) for name in da if name in db]
    best_a, best_b = da.get(_best_rung(a)), db.get(_best_rung(b))
    converged = _row("converged clip", best_a, best_b, bar) if best_a and best_b else None
    regressions = [r["rung"] for r in [*rows, *([converged] if converged else [])] if r["verdict"] == "slower"]
    return {
        "a": a.id,
        "b": b.id,
        "min_gain": bar,
        "rungs": rows,
        "converged": converged,
        "only_in_a": [n for n in da if n not in db],
        "only_in_b": [n for n in db if n not in da],
        "differences": differences(a, b),
        "regressions": regressions,
    }


def _best_rung(run: Run) -> str:
    """The rung whose trial is the run's converged best (best.yaml names the trial); "" before it converged."""
    name = ((run.best or {}).get("measured") or {}).get("name")
    return next((e["rung"] for e in run.events if e["kind"] == "decision" and e.get("name") == name), "")


def markdown(report: dict) -> str:
    lines = [f"# {report['a']} (A) vs {report['b']} (B)", ""]
    lines += ["Differences: " + ("; ".join(report["differences"]) if report["differences"] else "none recorded"), ""]
    lines += ["| rung | A | B | B/A | verdict | why |", "| --- | --- | --- | --- | --- | --- |"]
    for row in [*report["rungs"], *([report["converged"]] if report["converged"] else [])]:
        figures = f"{row['a_s']:.3f} s | {row['b_s']:.3f} s | {row['ratio']:.3f}"
        lines.append(f"| {row['rung']} | {figures} | **{row['verdict']}** | {row['why']} |")
    for side in ("a", "b"):
        if report[f"only_in_{side}"]:
            lines.append(f"\nMeasured only in {side.upper()}: {', '.join(report[f'only_in_{side}'])}")
    bar = f"{100 * report['min_gain']:g} %"
    if report["regressions"]:
        lines.append(f"\n**Regression** beyond noise and the {bar} bar: {', '.join(report['regressions'])}")
    else:
        lines.append(f"\nNo regression beyond noise and the {bar} bar.")
    return "\n".join(lines) + "\n"
