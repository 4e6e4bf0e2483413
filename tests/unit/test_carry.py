"""Which static FP8 scales a trial takes from the best (agent/carry.py): only where its experts compute as the best's."""

from agent import carry
from agent.runtime.config import FP8_SCALES_FILE, Knobs, Workload

WORKLOAD = Workload(prompt="A cat", height=48, width=64, frames=9, seed=7)


def _best(tmp_path, scales: bool = True, **knobs) -> dict:
    if scales:
        (tmp_path / FP8_SCALES_FILE).write_bytes(b"ranges")
    static = Knobs(fp8="torchao_static", lightning=True, steps=4, **knobs)
    return {"name": "11-static-fp8", "dir": str(tmp_path), "knobs": static.model_dump(), "workload": WORKLOAD.model_dump()}


def test_the_confirmation_and_a_decode_rung_take_the_bests_scales(tmp_path):
    best = _best(tmp_path)
    same = Knobs.model_validate(best["knobs"])
    carried = carry.carried_calibration(best, same, WORKLOAD)
    assert carried is not None and carried.trial == "11-static-fp8" and carried.path == str(tmp_path / FP8_SCALES_FILE)
    assert carry.carried_calibration(best, same.model_copy(update={"vae_decode": "compiled", "vae_tiling": False}), WORKLOAD)


def test_experts_that_compute_otherwise_calibrate_again(tmp_path):
    best = _best(tmp_path)
    same = Knobs.model_validate(best["knobs"])
    for change in ({"attention": "_flash_3"}, {"steps": 8}, {"guidance_scale": 3.0}, {"ulysses": 2}, {"fp8": "torchao_row"}):
        assert carry.carried_calibration(best, same.model_copy(update=change), WORKLOAD) is None, change
    other = WORKLOAD.model_copy(update={"prompt": "A dog"})
    assert carry.carried_calibration(best, same, other) is None
    assert carry.carried_calibration(None, same, WORKLOAD) is None


def test_a_best_that_wrote_no_scales_carries_none(tmp_path):
    best = _best(tmp_path, scales=False)
    assert carry.carried_calibration(best, Knobs.model_validate(best["knobs"]), WORKLOAD) is None
