"""The synthetic source: a real WanPipeline saved in diffusers layout, loaded back, LoRA path real."""

import os
from pathlib import Path

import pytest
import torch
from diffusers import WanPipeline

from agent import sources
from agent.runtime.pipeline import fuse_lightning
from agent.sources import synthetic


@pytest.fixture(scope="module")
def model() -> sources.ModelFiles:
    return sources.resolve("synthetic:tiny", Path(os.environ["WAN_AGENT_CACHE"]))


def test_written_in_diffusers_layout_with_a_lightning_pair(model):
    index = (Path(model.path) / "model_index.json").read_text()
    for part in ("transformer", "transformer_2", "text_encoder", "tokenizer", "vae", "scheduler"):
        assert f'"{part}"' in index and (Path(model.path) / part).is_dir()
    assert model.lora is not None and all(Path(p).is_file() for p in model.lora.values())
    assert sources.resolve("synthetic:tiny", Path(os.environ["WAN_AGENT_CACHE"])).path == model.path  # built once


def test_reloads_with_from_pretrained_as_two_experts(model):
    pipe = WanPipeline.from_pretrained(model.path, dtype=torch.float32)
    assert pipe.config.boundary_ratio == 0.875
    assert pipe.transformer is not None and pipe.transformer_2 is not None
    ids = pipe.tokenizer("A cat walking on the grass").input_ids
    assert ids[-1] == pipe.tokenizer.eos_token_id  # T5-style: </s> appended
    assert pipe.tokenizer.unk_token_id not in ids[:-1]


def test_weights_are_fixed_by_the_seed():
    a, b, c = (synthetic.build_pipeline("tiny", seed) for seed in (0, 0, 1))
    wa, wb, wc = (p.transformer_2.proj_out.weight for p in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_every_precision_starts_from_the_same_weights():
    # torch draws different numbers per dtype; an fp16 rung must be the bf16 baseline's model, rounded
    # (exactly the same except below fp16's normal range, ~6e-5, where fp16 keeps fewer bits).
    bf16, fp16 = (synthetic.build_pipeline("tiny", 0, device="cpu", dtype=d) for d in (torch.bfloat16, torch.float16))
    assert fp16.transformer.blocks[0].attn1.to_q.weight.dtype == torch.float16
    for a, b in ((bf16.transformer, fp16.transformer), (bf16.vae, fp16.vae), (bf16.text_encoder, fp16.text_encoder)):
        for (name, wa), wb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
            torch.testing.assert_close(wb.float(), wa.float(), rtol=0, atol=3e-8, msg=name)
    lora = [synthetic.lightning_lora_state_dict("tiny", 1, dtype=d) for d in (torch.bfloat16, torch.float16)]
    for key, tensor in lora[0].items():
        torch.testing.assert_close(lora[1][key].float(), tensor.float(), rtol=0, atol=3e-8, msg=key)


def test_lightning_lora_fuses_into_both_experts(model):
    pipe = WanPipeline.from_pretrained(model.path, dtype=torch.float32)
    before = [t.blocks[0].attn1.to_q.weight.clone() for t in (pipe.transformer, pipe.transformer_2)]
    fuse_lightning(pipe, model.lora)
    after = [t.blocks[0].attn1.to_q.weight for t in (pipe.transformer, pipe.transformer_2)]
    for old, new in zip(before, after, strict=True):
        assert not torch.equal(old, new)
    assert not any("lora" in name for name, _ in pipe.transformer.named_modules())  # fused and unloaded


def test_unknown_sources_say_what_exists(tmp_path):
    with pytest.raises(sources.SourceError, match="known: 5b, a14b, tiny, tiny-5b"):
        sources.resolve("synthetic:huge", tmp_path)
    with pytest.raises(sources.SourceError, match=r"unknown variant 'wan-9000'; known: t2v-a14b, ti2v-5b"):
        sources.resolve("wan-9000", tmp_path)
    with pytest.raises(sources.SourceError, match="unknown scheme 'ftp'"):
        sources.resolve("ftp:x/y", tmp_path)
    with pytest.raises(sources.SourceError, match="no model_index.json"):
        sources.resolve(f"local:{tmp_path}", tmp_path)
