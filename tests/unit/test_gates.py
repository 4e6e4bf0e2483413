from agent.gates import check
from agent.runtime.config import Knobs

DECISION = {"noise_multiple": 3.0, "max_relative_error": 0.1, "min_psnr_dB": 35.0}
REFERENCE = Knobs().model_dump()
NOISE = {"transformer": 6e-3, "transformer_2": 7e-3, "vae_frame_psnr_dB": 33.0}


def errors(high: float, low: float) -> dict:
    return {"relative_error": {"transformer@999": high / 2, "transformer@937": high, "transformer_2@437": low}}


def test_a_same_precision_rung_must_stay_within_the_references_noise():
    compiled = REFERENCE | {"compile": "regional"}
    assert check(errors(1.5e-2, 1.9e-2), NOISE, compiled, REFERENCE, DECISION)["passed"]
    gate = check(errors(1.5e-2, 3e-2), NOISE, compiled, REFERENCE, DECISION)  # 3e-2 > 3 x 7e-3
    assert not gate["passed"] and "transformer_2@437" in gate["reason"] and "2.1e-02" in gate["reason"]
    assert not check(errors(float("nan"), 0.0), NOISE, compiled, REFERENCE, DECISION)["passed"]


def test_a_precision_trade_may_spend_the_playbooks_budget():
    fp8 = REFERENCE | {"fp8": "torchao_row"}
    assert check(errors(0.05, 0.04), NOISE, fp8, REFERENCE, DECISION)["passed"]
    assert not check(errors(0.15, 0.04), NOISE, fp8, REFERENCE, DECISION)["passed"]
    sage = REFERENCE | {"attention": "sage"}
    assert check(errors(0.05, 0.04), NOISE, sage, REFERENCE, DECISION)["passed"]
    # On top of an FP8 reference, whose own output moves that much between processes, a compile rung too.
    fp8_reference = REFERENCE | {"fp8": "torchao_row"}
    assert check(errors(0.05, 0.04), NOISE, fp8_reference | {"compile": "regional"}, fp8_reference, DECISION)["passed"]


def test_a_vae_rung_is_judged_on_its_decoded_frame_not_the_transformer():
    compiled = REFERENCE | {"vae_decode": "compiled"}
    far_transformer = errors(0.5, 0.5)  # other processes' outputs: not what this rung changes
    close = far_transformer | {"vae_frame": {"comparable": True, "psnr_dB": 30.0}}  # bound 33 - 9.5 dB
    far = far_transformer | {"vae_frame": {"comparable": True, "psnr_dB": 20.0}}
    assert check(close, NOISE, compiled, REFERENCE, DECISION)["passed"]
    gate = check(far, NOISE, compiled, REFERENCE, DECISION)
    assert not gate["passed"] and "20.0 dB" in gate["reason"]
    # Tiling approximates the decode: down to the playbook's min_psnr_dB even where the noise bound is higher.
    quiet = NOISE | {"vae_frame_psnr_dB": 51.8}  # an H200's, for the A14B's VAE
    untiled = {"vae_frame": {"comparable": True, "psnr_dB": 36.0}}
    assert not check(untiled, quiet, compiled, REFERENCE, DECISION)["passed"]
    assert check(untiled, quiet, REFERENCE | {"vae_tiling": True}, REFERENCE, DECISION)["passed"]


def test_without_a_measured_noise_the_playbooks_bound_applies_and_a_missing_measurement_fails():
    compiled = REFERENCE | {"compile": "regional"}
    gate = check(errors(0.05, 0.05), None, compiled, REFERENCE, DECISION)
    assert gate["passed"] and "no noise measured" in gate["reason"]
    assert not check({}, NOISE, compiled, REFERENCE, DECISION)["passed"]


def test_fp8_attention_is_a_trade_judged_on_the_experts_and_on_the_whole_clip():
    fp8_attention = REFERENCE | {"attention": "_flash_3", "attention_fp8": True}
    reference = REFERENCE | {"attention": "_flash_3"}
    clip = {"comparable": True, "psnr_dB": 38.2, "ssim": 0.97}
    gate = check(errors(0.05, 0.04) | clip, NOISE, fp8_attention, reference, DECISION)
    assert gate["passed"] and "clip PSNR >= 35.0 dB" in gate["reason"] and "precision trade" in gate["reason"]
    blurred = check(errors(0.05, 0.04) | clip | {"psnr_dB": 31.0}, NOISE, fp8_attention, reference, DECISION)
    assert not blurred["passed"] and "its clip is at 31.0 dB PSNR" in blurred["reason"]
    assert not check(errors(0.15, 0.04) | clip, NOISE, fp8_attention, reference, DECISION)["passed"]
    # In probe mode no clip is made: the experts' outputs alone judge it.
    assert check(errors(0.05, 0.04), NOISE, fp8_attention, reference, DECISION)["passed"]
