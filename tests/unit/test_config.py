import pytest
from pydantic import ValidationError

from agent.runtime.config import Knobs, TrialConfig, Workload

WORK = dict(prompt="a cat", height=96, width=160, frames=17, seed=1)


@pytest.mark.parametrize(
    ("field", "value", "hint"),
    [
        ("height", 100, "multiple of 16 (got 100; try 96 or 112)"),
        ("width", 8, "multiple of 16 (got 8; try 16 or 16)"),
        ("frames", 16, "4n+1 (got 16; try 13 or 17)"),
        ("frames", 0, "greater than 0"),
        ("prompt", "", "at least 1 character"),
    ],
)
def test_impossible_workload_names_the_field_and_the_fix(field, value, hint):
    with pytest.raises(ValidationError) as err:
        Workload(**WORK | {field: value})
    assert err.value.errors()[0]["loc"] == (field,)
    assert hint in str(err.value)


def test_knobs_refuse_unknown_keys_and_values():
    with pytest.raises(ValidationError, match="Extra inputs"):
        Knobs(stepz=4)
    with pytest.raises(ValidationError, match="'fp32', 'bf16' or 'fp16'"):
        Knobs(precision="int4")


def test_knobs_describe_reads_like_a_configuration():
    assert (
        Knobs(fp8="layerwise", lightning=True, steps=4, guidance_scale=1, guidance_scale_2=1, flow_shift=5).describe()
        == "bf16, fp8=layerwise (storage), lightning, 4 steps, cfg 1/1, shift 5"
    )


def test_lightning_without_lora_files_is_refused():
    with pytest.raises(ValidationError, match="no lora files"):
        TrialConfig(name="t", model_path="/m", workload=Workload(**WORK), knobs=Knobs(lightning=True), output_dir="/o")


def test_fp4_and_fp8_together_are_refused():
    with pytest.raises(ValidationError, match="fp4=nvfp4 and fp8=torchao_row both set"):
        Knobs(fp4="nvfp4", fp8="torchao_row")
    assert Knobs(fp4="nvfp4").describe().startswith("bf16, fp4=nvfp4")
