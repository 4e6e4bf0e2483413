"""Whether a trial is kept: it must work, pass the quality gate, and beat the best beyond the noise."""

from __future__ import annotations

from typing import Literal

from agent import stats

# confirmed / unconfirmed: the probe-mode winner timed once more as a whole clip.
# changed_workload: it ran only at a smaller size (remediation's last resort): not comparable, never kept.
# inconclusive: measured min_gain faster, but the interval of the gain also holds a slow-down (the host is too noisy).
Verdict = Literal[
    "baseline",
    "kept",
    "reverted",
    "inconclusive",
    "failed",
    "rejected",
    "skipped",
    "confirmed",
    "unconfirmed",
    "changed_workload",
]
# Verdicts that leave the run converged but its figures not fully trusted: the exit status says so.
UNRESOLVED = ("inconclusive", "unconfirmed")
# Errors that mean "this machine cannot run that rung", not "the rung is broken": the rung is skipped.
CANNOT_RUN_HERE = ("BackendUnavailable", "UnsupportedOnHardware")


def failure_reason(outcome: dict) -> str | None:
    """Why the trial produced no usable measurement, or None if it did."""
    session, result = outcome["session"], outcome.get("result") or {}
    if session["outcome"] == "timeout":
        return f"timed out after {session['wall_s']:.0f} s and was killed"
    if session["outcome"] == "idle":
        return f"printed nothing past the idle timeout and was killed after {session['wall_s']:.0f} s"
    if session["outcome"] == "lost":
        return "its tmux session vanished without an exit code (tmux server or machine died)"
    code = session["exit_code"]
    if code is not None and code >= 128 and not result:
        again = " again, after being run once more" if outcome.get("reruns") else ""
        return f"the worker was killed by signal {code - 128}{again}, before writing its result"
    if session["exit_code"] != 0 or result.get("status") != "ok":
        error = result.get("error") or {}
        detail = f"{error.get('type')}: {error.get('message')}" if error else "no result.json; see stdout.log"
        return f"worker exited with status {session['exit_code']}: {detail}"
    return None


def judge(outcome: dict, best: dict | None, min_gain: float, fidelity_gate: dict | None = None) -> tuple[Verdict, str]:
    """Decide on a finished trial. ``best`` is the current best trial's record (None before the baseline);
    ``fidelity_gate`` (agent.gates.check) is given for same-function rungs, whose output must match the reference's."""
    failed = failure_reason(outcome)
    if failed:
        error_type = ((outcome.get("result") or {}).get("error") or {}).get("type")
        return ("skipped" if error_type in CANNOT_RUN_HERE else "failed"), failed
    result = outcome["result"]
    if not result["quality"]["passed"]:
        return "rejected", "output is broken, not slow: " + "; ".join(result["quality"]["reasons"])
    if fidelity_gate is not None and best is not None and not fidelity_gate["passed"]:
        return "rejected", fidelity_gate["reason"]
    summary = result["summary"]
    if best is None:
        return (
            "baseline",
            f"the reference for every rung: {summary['generate_s']:.3f} s per clip (spread {summary['spread_s']:.3f} s)",
        )
    return timing_verdict(best, summary, min_gain)


def samples(figures: dict) -> list[float]:
    """A trial's timed repeats (probe mode: one predicted clip per timed step); the median alone for records
    made before repeats were kept."""
    return list(figures.get("samples_s") or [figures["generate_s"]])


def timing_verdict(best: dict, summary: dict, min_gain: float) -> tuple[Verdict, str]:
    """Kept if surely faster and by at least ``min_gain`` as measured; reverted if not faster by ``min_gain`` as
    measured; inconclusive if it measured ``min_gain`` faster but the interval of the gain also holds a slow-down:
    the noise of this host cannot tell a win from none, so the incumbent stays and the run says so."""
    best_s, time_s = best["generate_s"], summary["generate_s"]
    g = stats.gain(samples(best), samples(summary))
    figures = (
        f"{time_s:.3f} s vs best {best_s:.3f} s (median of {len(samples(summary))} and {len(samples(best))}); "
        f"time saved {g.describe()}"
    )
    bar = f"{100 * min_gain:g} %"
    if g.point >= min_gain and g.low > 0:
        return "kept", f"{best_s / time_s:.2f}x faster than the best: {figures}, surely faster and by more than {bar}"
    if g.point >= min_gain:
        return "inconclusive", (
            f"the noise cannot tell: {figures} measured faster by more than {bar}, but the interval also holds a "
            "slow-down; the best stays, and the run reports this verdict as unresolved (measure again on a quieter machine)"
        )
    if g.low > 0:
        return "reverted", f"faster, but by less than {bar}: {figures}"
    return "reverted", f"not faster by {bar}: {figures}"


def repeats_for(baseline: list[float], min_gain: float, fewest: int, most: int) -> tuple[int, str, bool]:
    """How many timed repeats tell a ``min_gain`` difference from the noise the baseline's repeats showed, kept
    within [fewest, most]; the flag is True when even ``most`` cannot (the host is too noisy to resolve it)."""
    if len(baseline) < 2:
        return most, "no noise measured (fewer than 2 baseline repeats): the most repeats allowed", False
    sigma = stats.log_sigma(baseline)
    needed = stats.repeats_needed(sigma, min_gain)
    k = min(max(needed, fewest), most)
    why = (
        f"baseline noise ±{100 * sigma:.2f} % per repeat (MAD of {len(baseline)} repeats); {needed} repeat(s) "
        f"resolve a {100 * min_gain:g} % gain"
    )
    if needed > most:
        return k, why + f": capped at {most}, so verdicts near the bar may be inconclusive on this host", True
    return k, why + ("" if k == needed else f", kept within [{fewest}, {most}]"), False


def confirm(outcome: dict, best: dict, tolerance: float) -> tuple[Verdict, str]:
    """Judge the full-clip confirmation of a winner found in probe mode: confirmed only within the error the probe
    stated for its prediction (``tolerance``, the playbook's, where a record predates stated errors)."""
    failed = failure_reason(outcome)
    if failed:
        return "unconfirmed", f"the full clip did not finish: {failed}"
    result = outcome["result"]
    if not result["quality"]["passed"]:
        return "unconfirmed", "the full clip is broken: " + "; ".join(result["quality"]["reasons"])
    clip_s, predicted_s = result["summary"]["generate_s"], best["generate_s"]
    tolerance = best.get("prediction_error") or tolerance
    off = (clip_s - predicted_s) / predicted_s
    said = (
        f"one full clip took {clip_s:.3f} s against {predicted_s:.3f} s predicted from probe-mode steps "
        f"({100 * off:+.1f} %; the probe stated ±{100 * tolerance:.1f} %)"
    )
    if abs(off) > tolerance:
        return "unconfirmed", f"{said}: outside the stated error, so the prediction does not hold"
    return "confirmed", said
