"""What a split over ranks refuses before it computes: tokens that do not cut into equal shares (diffusers asserts it
mid-forward), FP8 attention asked for the log-sum-exp ring attention merges by (it has none)."""

import pytest
import torch

from agent.runtime import kernels, parallel
from agent.runtime.config import Knobs, Workload
from agent.sources import synthetic


def test_tokens_that_do_not_cut_into_equal_shares_are_named():
    assert parallel.uneven(Knobs(ulysses=4), 32760) is None  # 480x832, 81 frames
    said = parallel.uneven(Knobs(ulysses=4), 33390)  # 480x848
    assert said is not None and "33390 tokens do not split into 4 equal shares" in said
    assert "into 8 equal shares" in parallel.uneven(Knobs(ulysses=4, ring=2), 32764)
    assert parallel.uneven(Knobs(runtime="official", ulysses=4), 33390) is None  # the reference pads its tokens
    assert parallel.uneven(Knobs(cfg_parallel=True), 33390) is None  # the CFG split does not cut tokens


def test_a_pipeline_and_a_clip_size_name_the_tokens_a_split_cannot_share():
    a14b = synthetic.build_pipeline("a14b", 0, device="meta", dtype=torch.bfloat16)  # the shapes, no memory taken

    def clip(width: int) -> Workload:
        return Workload(prompt="a cat", width=width, height=480, frames=81, seed=0)

    said = parallel.share_problem(a14b, Knobs(ulysses=4), clip(848))
    assert said == (
        "848x480, 81 frames: 33390 tokens do not split into 4 equal shares (ulysses x ring): pick a size whose token "
        "count (latent frames x latent height x latent width / 4) the split divides"
    )
    assert parallel.share_problem(a14b, Knobs(ulysses=4), clip(832)) is None
    assert parallel.share_problem(a14b, Knobs(), clip(848)) is None


def test_fp8_attention_refuses_to_hand_ring_attention_a_log_sum_exp_it_does_not_have():
    q = torch.zeros(1, 8, 2, 64, dtype=torch.bfloat16)
    kernels.set_fp8_attention(True)
    try:
        with pytest.raises(ValueError, match="FP8 attention returns no log-sum-exp"):
            kernels._attend(q, q, q, None, False, return_lse=True)
    finally:
        kernels.set_fp8_attention(False)
