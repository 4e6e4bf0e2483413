"""Whether a trial is kept: it must work, pass the quality gate, and beat the best beyond the noise."""

from __future__ import annotations

import math
from typing import Literal

# confirmed / unconfirmed: the probe-mode winner timed once more as a whole clip.
# changed_workload: it ran only at a smaller size (remediation's last resort): not comparable, never kept.
Verdict = Literal["baseline", "kept", "reverted", "failed", "rejected", "skipped", "confirmed", "unconfirmed", "changed_workload"]
# Expected range of n samples of a normal distribution, in standard deviations (the d2 constant of
# quality-control charts): the spread of n repeats is about D2[n]·σ.
D2 = {2: 1.128, 3: 1.693, 4: 2.059, 5: 2.326, 6: 2.534, 7: 2.704, 8: 2.847, 9: 2.970, 10: 3.078}
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


def judge(outcome: dict, best: dict | None, min_gain: float, max_relative_error: float | None = None) -> tuple[Verdict, str]:
    """Decide on a finished trial. ``best`` is the current best trial's record (None before the baseline);
    ``max_relative_error`` is given for same-function rungs, whose output must match the baseline's."""
    failed = failure_reason(outcome)
    if failed:
        error_type = ((outcome.get("result") or {}).get("error") or {}).get("type")
        return ("skipped" if error_type in CANNOT_RUN_HERE else "failed"), failed
    result = outcome["result"]
    if not result["quality"]["passed"]:
        return "rejected", "output is broken, not slow: " + "; ".join(result["quality"]["reasons"])
    errors: dict[str, float] = (result.get("fidelity") or {}).get("relative_error") or {}
    if max_relative_error is not None and best is not None:
        if not errors:
            return "rejected", "same-function rung without a fidelity measurement against the baseline"
        for name, error in errors.items():
            if not error <= max_relative_error:  # NaN fails too
                return "rejected", (
                    f"computes a different function: {name}'s output differs from the baseline's by "
                    f"{error:.1e} (relative), more than {max_relative_error:.0e}"
                )
    time_s, spread_s = result["summary"]["generate_s"], result["summary"]["spread_s"]
    if best is None:
        return "baseline", f"the reference for every rung: {time_s:.3f} s per clip (spread {spread_s:.3f} s)"
    best_s = best["generate_s"]
    needed = max(spread_s, best["spread_s"], min_gain * best_s)
    gain = best_s - time_s
    if gain > needed:
        return (
            "kept",
            f"{best_s / time_s:.2f}x faster than the best ({time_s:.3f} s vs {best_s:.3f} s; "
            f"gain {gain:.3f} s > noise/margin {needed:.3f} s)",
        )
    return "reverted", (
        f"not faster beyond the noise: {time_s:.3f} s vs best {best_s:.3f} s (gain {gain:+.3f} s, needed > {needed:.3f} s)"
    )


def repeats_for(spread_s: float, repeats: int, time_s: float, min_gain: float, fewest: int, most: int) -> tuple[int, str]:
    """How many timed repeats tell a ``min_gain`` difference from the noise the baseline's repeats showed.

    σ ≈ spread / D2[repeats]; the median of k repeats varies by ≈ 1.25·σ/√k, the difference of two such
    medians by √2 times that; k is chosen so that two of those (≈ 95 %) fit in the margin min_gain·time.
    """
    if repeats < 2 or time_s <= 0:
        return most, "no spread measured (fewer than 2 baseline repeats): the most repeats allowed"
    sigma = spread_s / D2[min(repeats, max(D2))]
    margin = max(min_gain, 1e-3) * time_s
    needed = math.ceil((2 * math.sqrt(2) * 1.2533 * sigma / margin) ** 2)
    k = min(max(needed, fewest), most)
    why = (
        f"baseline noise σ ≈ {sigma:.4f} s ({100 * sigma / time_s:.2f} % of {time_s:.3f} s, from the spread of "
        f"{repeats} repeats); {needed} repeat(s) resolve a {100 * min_gain:g} % gain"
    )
    return k, why + ("" if k == needed else f", kept within [{fewest}, {most}]")


def confirm(outcome: dict, best: dict) -> tuple[Verdict, str]:
    """Judge the full-clip confirmation of a winner found in probe mode."""
    failed = failure_reason(outcome)
    if failed:
        return "unconfirmed", f"the full clip did not finish: {failed}"
    result = outcome["result"]
    if not result["quality"]["passed"]:
        return "unconfirmed", "the full clip is broken: " + "; ".join(result["quality"]["reasons"])
    clip_s, predicted_s = result["summary"]["generate_s"], best["generate_s"]
    return "confirmed", (
        f"one full clip took {clip_s:.3f} s against {predicted_s:.3f} s predicted from probe-mode steps "
        f"({100 * (clip_s - predicted_s) / predicted_s:+.1f} %)"
    )
