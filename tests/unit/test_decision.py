from agent.decision import confirm, judge, repeats_for

GOOD_QUALITY = {"passed": True, "reasons": []}


def outcome(generate_s=1.0, spread_s=0.01, session="exited", exit_code=0, quality=GOOD_QUALITY, status="ok", error=None):
    result = {"status": status, "summary": {"generate_s": generate_s, "spread_s": spread_s}, "quality": quality}
    if error:
        result["error"] = error
    return {"session": {"outcome": session, "exit_code": exit_code, "wall_s": 12.0}, "result": result}


BEST = {"generate_s": 1.0, "spread_s": 0.02}


def test_first_good_trial_is_the_baseline():
    assert judge(outcome(), None, 0.02)[0] == "baseline"


def test_kept_only_beyond_the_noise():
    assert judge(outcome(generate_s=0.5), BEST, 0.02)[0] == "kept"
    verdict, reason = judge(outcome(generate_s=0.99), BEST, 0.0)  # 10 ms gain inside 20 ms spread
    assert verdict == "reverted" and "needed > 0.020 s" in reason
    assert judge(outcome(generate_s=1.3), BEST, 0.02)[0] == "reverted"


def test_noise_of_the_candidate_counts_too():
    assert judge(outcome(generate_s=0.9, spread_s=0.2), BEST, 0.0)[0] == "reverted"


def test_min_gain_applies_when_the_noise_is_tiny():
    assert judge(outcome(generate_s=0.97, spread_s=0.0), {"generate_s": 1.0, "spread_s": 0.0}, 0.05)[0] == "reverted"


def test_broken_output_is_rejected_not_slow():
    verdict, reason = judge(outcome(generate_s=0.1, quality={"passed": False, "reasons": ["3 of 9 frames blank"]}), BEST, 0.02)
    assert verdict == "rejected" and "broken" in reason and "blank" in reason


def test_failures_say_why():
    assert "timed out" in judge(outcome(session="timeout", exit_code=None), BEST, 0.02)[1]
    assert "idle timeout" in judge(outcome(session="idle", exit_code=None), BEST, 0.02)[1]
    assert "vanished" in judge(outcome(session="lost", exit_code=None), BEST, 0.02)[1]
    verdict, reason = judge(
        outcome(exit_code=1, status="failed", error={"type": "OutOfMemoryError", "message": "CUDA out of memory"}), BEST, 0.02
    )
    assert verdict == "failed" and "OutOfMemoryError: CUDA out of memory" in reason


def test_a_same_function_rung_must_match_the_baseline():
    close = outcome(generate_s=0.5)
    close["result"]["fidelity"] = {"relative_error": {"transformer": 0.03, "transformer_2": 0.02}}
    assert judge(close, BEST, 0.02, max_relative_error=0.1)[0] == "kept"
    far = outcome(generate_s=0.5)
    far["result"]["fidelity"] = {"relative_error": {"transformer": 0.03, "transformer_2": float("nan")}}
    verdict, reason = judge(far, BEST, 0.02, max_relative_error=0.1)
    assert verdict == "rejected" and "transformer_2" in reason and "different function" in reason
    assert judge(outcome(generate_s=0.5), BEST, 0.02, max_relative_error=0.1)[0] == "rejected"  # never measured
    assert judge(far, BEST, 0.02)[0] == "kept"  # a distilled rung is not held to the baseline's function


def test_a_rung_this_machine_cannot_run_is_skipped_not_failed():
    cannot = outcome(exit_code=1, status="failed", error={"type": "BackendUnavailable", "message": "flash_attn missing"})
    verdict, reason = judge(cannot, BEST, 0.02)
    assert verdict == "skipped" and "flash_attn missing" in reason


def test_remediation_walks_a_rule_once_and_accumulates_its_changes():
    from agent.remediation import derived_rung, next_fix

    rules = [{"name": "oom", "match": ["out of memory"], "changes": [{"vae_tiling": True}, {"offload": "model"}]}]
    failed = {
        "name": "01-fp8",
        "rung": "fp8",
        "set": {"fp8": "torchao_row"},
        "gate": "fidelity",
        "verdict": "failed",
        "reason": "worker exited with status 1: OutOfMemoryError: CUDA out of memory",
    }
    rule, step = next_fix(failed, rules)
    first = derived_rung(failed, rule, step)
    assert first["name"] == "fp8-oom-1" and first["set"] == {"fp8": "torchao_row", "vae_tiling": True}
    again = {
        "name": "02-fp8-oom-1",
        "rung": first["name"],
        "set": first["set"],
        "gate": "fidelity",
        "verdict": "failed",
        "reason": failed["reason"],
        "remediation": first["remediation"],
    }
    second = derived_rung(again, *next_fix(again, rules))
    assert second["set"] == {"fp8": "torchao_row", "vae_tiling": True, "offload": "model"} and second["name"] == "fp8-oom-2"
    exhausted = again | {"remediation": second["remediation"]}
    assert next_fix(exhausted, rules) is None  # never retried without end
    assert next_fix(failed | {"reason": "Segmentation fault"}, rules) is None  # no rule: recorded and skipped
    assert next_fix(failed | {"verdict": "rejected"}, rules) is None  # broken output is not remediated


def test_repeats_follow_the_baselines_noise():
    quiet, _ = repeats_for(spread_s=0.001, repeats=3, time_s=10.0, min_gain=0.02, fewest=2, most=10)
    assert quiet == 2
    # σ = 0.1693/1.693 = 0.1 s on 10 s; margin 0.2 s: k = ceil((2·√2·1.2533·0.1/0.2)²) = 4
    four, why = repeats_for(spread_s=0.1693, repeats=3, time_s=10.0, min_gain=0.02, fewest=2, most=10)
    assert four == 4 and "σ ≈ 0.1000 s" in why
    noisy, why = repeats_for(spread_s=2.0, repeats=3, time_s=10.0, min_gain=0.02, fewest=2, most=10)
    assert noisy == 10 and "kept within [2, 10]" in why
    assert repeats_for(0.0, 1, 10.0, 0.02, 2, 7)[0] == 7  # no spread measured: the most


def test_confirmation_compares_the_full_clip_with_the_prediction():
    best = {"generate_s": 10.0}
    verdict, reason = confirm(outcome(generate_s=10.5), best)
    assert verdict == "confirmed" and "+5.0 %" in reason
    verdict, reason = confirm(outcome(generate_s=10.5, quality={"passed": False, "reasons": ["NaN"]}), best)
    assert verdict == "unconfirmed" and "broken" in reason
