"""The official runtime on the tiny model: its components converted from diffusers' compute what diffusers' compute,
and a trial with ``runtime: official`` runs through the real worker, generating a video with the reference modules
and sampling loop, measured, checked and recorded like a diffusers trial."""

import json
import os
import re

import numpy as np
import pytest
import torch
import yaml
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

from agent.provision import official_code
from agent.quality import relative_error
from agent.runtime.config import Knobs
from agent.runtime.official import attention_patch, convert, modules, support
from agent.runtime.official.support import OFFICIAL_REPO
from agent.sources import synthetic
from tests.conftest import small_playbook, wan_agent, write_playbook
from tests.integration.test_worker import config, model, work  # noqa: F401  (model: a fixture)

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny():
    modules.patch_attention(CPU)
    return synthetic.build_pipeline("tiny", 0, dtype=torch.float32)


def err(a: torch.Tensor, b: torch.Tensor) -> float:
    return relative_error(a.detach().float().numpy(), b.detach().float().numpy())


def test_the_converted_components_compute_what_diffusers_computes(tiny):
    ids = tiny.tokenizer(["a cat on grass"], padding="max_length", max_length=512, truncation=True, return_tensors="pt")
    x, z = torch.randn(1, 16, 5, 12, 20), torch.randn(1, 16, 3, 12, 20)
    text = torch.randn(1, 512, 64)
    with torch.no_grad():
        t5 = convert.text_encoder(tiny.text_encoder)(ids.input_ids, ids.attention_mask)
        assert err(t5, tiny.text_encoder(ids.input_ids, ids.attention_mask).last_hidden_state) < 1e-5
        dit = convert.transformer(tiny.transformer)([x[0]], torch.tensor([700.0]), [text[0]], seq_len=5 * 6 * 10)[0]
        ours = tiny.transformer(hidden_states=x, timestep=torch.tensor([700.0]), encoder_hidden_states=text, return_dict=False)[0]
        assert err(dit[None], ours) < 1e-3  # the reference attention computes in bf16, as flash_attn does
        video = convert.vae(tiny.vae).decode(z, [0.0, 1.0])
        assert err(video, tiny.vae.decode(z, return_dict=False)[0]) < 1e-3


def test_conversion_shares_the_tensors_and_names_what_it_cannot_map(tiny):
    official = convert.transformer(tiny.transformer)
    assert official.blocks[0].self_attn.q.weight.data_ptr() == tiny.transformer.blocks[0].attn1.to_q.weight.data_ptr()
    broken = {k: v for k, v in tiny.transformer.state_dict().items() if "blocks.1.ffn" not in k}
    with pytest.raises(convert.ConversionError, match=r"official keys not filled \['blocks.1.ffn"):
        convert._assign(official, broken, convert._inverse(convert_wan_transformer_to_diffusers, official))


def test_an_official_trial_generates_a_video_and_is_judged_against_the_diffusers_baseline(model, tmp_path):  # noqa: F811
    base = config(model, tmp_path / "diffusers", precision="fp32", steps=6)
    code, baseline, log = work(base)
    assert code == 0, log
    trial = config(model, tmp_path / "official", precision="fp32", steps=6, runtime="official")
    trial.reference_dir = base.output_dir
    code, result, log = work(trial)
    assert code == 0, log
    assert result["status"] == "ok" and result["quality"]["passed"]
    assert (tmp_path / "official" / "video.mp4").stat().st_size > 0
    assert result["setup"]["runtime"]["code"].startswith("wan22 2.2.11")
    patch = result["setup"]["attention_patch"]
    assert patch["patched"] and "flash_attn" in patch["missing"] and patch["check"]["relative_error"] < 2e-2
    rep = result["repeats"][0]
    assert len(rep["step_s"]) == 6 and rep["step_expert"][0] == "transformer" and rep["step_expert"][-1] == "transformer_2"
    # Same weights, same function: each expert's check output is the diffusers baseline's, but for the reference
    # attention, which computes in bf16 as flash_attn does (before the text context was 512 tokens in both: 1.7e-2).
    errors = result["fidelity"]["relative_error"]
    assert len(errors) == 6 and max(errors.values()) < 2e-3, errors
    assert result["fidelity"]["psnr_dB"] > 15, result["fidelity"]  # the reference solver starts at σ 0.9997, diffusers at 1
    frames, reference = np.load(tmp_path / "official" / "frames.npy"), np.load(tmp_path / "diffusers" / "frames.npy")
    assert frames.shape == reference.shape and not np.array_equal(frames, reference)


def test_the_official_lightning_trial_carries_the_fused_lora(model, tmp_path):  # noqa: F811
    plain = config(
        model, tmp_path / "plain", precision="fp32", runtime="official", steps=4, guidance_scale=1.0, guidance_scale_2=1.0
    )
    code, _, log = work(plain)
    assert code == 0, log
    fast = config(model, tmp_path / "fast", precision="fp32", runtime="official", lightning=True, steps=4, guidance_scale=1.0,
                  guidance_scale_2=1.0, flow_shift=5.0)  # fmt: skip
    fast.reference_dir = plain.output_dir
    code, result, log = work(fast)
    assert code == 0, log
    assert result["stages"]["load_s"] > 0 and min(result["fidelity"]["relative_error"].values()) > 0.05  # another function


def test_settings_the_reference_code_has_no_counterpart_for_are_refused_before_and_in_a_trial(model, tmp_path):  # noqa: F811
    assert "fp32" in support.refusal(Knobs(runtime="official"), on_gpu=False)
    assert "vae_tiling" in support.refusal(Knobs(runtime="official", vae_tiling=True), on_gpu=True)
    assert "attention=flash_hub" in support.refusal(Knobs(runtime="official", attention="flash_hub"), on_gpu=True)
    assert support.refusal(Knobs(runtime="official", fp8="torchao_row", compile="regional"), on_gpu=True) is None
    assert support.refusal(Knobs(runtime="official", ulysses=4), on_gpu=True) is None  # its own sequence parallelism
    assert "not cfg_parallel" in support.refusal(Knobs(runtime="official", cfg_parallel=True), on_gpu=True)
    assert "not offload=model" in support.refusal(Knobs(runtime="official", ulysses=2, offload="model"), on_gpu=True)
    assert support.refusal(Knobs(runtime="official", ulysses=2, fsdp=True), on_gpu=True) is None  # its --dit_fsdp
    assert "set ulysses > 1" in support.refusal(Knobs(runtime="official", fsdp=True), on_gpu=True)
    assert "it needs GPUs" in support.refusal(Knobs(runtime="official", precision="fp32", ulysses=2, fsdp=True), on_gpu=False)
    assert "not with fp8" in support.refusal(Knobs(runtime="official", ulysses=2, fsdp=True, compile="regional"), on_gpu=True)
    assert "runtime official's" in support.refusal(Knobs(ulysses=2, fsdp=True), on_gpu=True)
    code, result, _ = work(config(model, tmp_path / "bf16", runtime="official"))
    assert code == 1 and "on the CPU it needs precision fp32" in result["error"]["message"]
    assert json.loads((tmp_path / "bf16" / "trial.json").read_text())["knobs"]["runtime"] == "official"


def test_the_agent_treats_the_runtime_as_one_more_rung(tmp_path, official_remote):
    book = small_playbook(
        ladder=[
            {"name": "official-runtime", "hypothesis": "The reference code.", "set": {"runtime": "official"}},
            {"name": "official-tiled", "hypothesis": "Refused.", "set": {"runtime": "official", "vae_tiling": True}},
        ]
    )
    book["baseline"]["precision"] = "fp32"  # the official runtime's precision on a CPU
    runs = tmp_path / "runs"
    url, pinned = official_remote  # provision fetches the official code at this commit; the trial runs it
    env = os.environ | {official_code.REPO_ENV: url, official_code.COMMIT_ENV: pinned}
    done = wan_agent("run", "--playbook", str(write_playbook(tmp_path / "official.yaml", book)), runs_dir=runs, env=env)
    assert done.returncode == 0, done.stderr
    run_dir = runs / done.stdout.strip()
    events = [json.loads(line) for line in (run_dir / "journal.jsonl").read_text().splitlines()]
    decisions = {e["name"]: e for e in events if e["kind"] == "decision"}
    official = decisions["01-official-runtime"]
    assert official["verdict"] in ("kept", "reverted")
    code = official["setup"]["runtime"]["code"]
    assert code.startswith(f"{OFFICIAL_REPO} at {pinned[:12]} (") and f"/official-code/wan2.2-{pinned[:12]};" in code
    if official["verdict"] == "reverted":  # a CPU runs it slower (fp32 modulation per token): the reason says which test failed
        assert re.search(r"slower|not faster|gain|gate|relative error", official["reason"]), official["reason"]
    skipped = {e["rung"]: e["reason"] for e in events if e["kind"] == "rung_skipped"}
    assert "does not take vae_tiling=True" in skipped["official-tiled"]
    journal = (run_dir / "journal.md").read_text()
    assert f"**Runtime.** The official code, {OFFICIAL_REPO} at {pinned[:12]}" in journal
    assert "flash_attn is not installed" in journal and f"Its code: {url} at {pinned[:12]} (fetched) at `" in journal
    # Its trial ran in the environment provision made from locks/official.txt; the baseline in the agent's own.
    env = json.loads((run_dir / "run.json").read_text())["runtimes"]["official"]
    assert (
        "Runtime `official` runs in an environment of its own" in journal
        and "wan22==2.2.11" in (run_dir / env["freeze"]).read_text()
    )
    python = {name: json.loads((run_dir / "trials" / name / "result.json").read_text())["python"] for name in decisions}
    assert python["01-official-runtime"] == env["python"] != python["00-baseline"]
    best = yaml.safe_load((run_dir / "best.yaml").read_text())
    assert best["knobs"]["runtime"] == ("official" if official["verdict"] == "kept" else "diffusers")


def test_a_compiled_block_takes_its_lengths_checked_outside_and_computes_the_same(tiny):
    # Regional compile of the official DiT (agent/runtime/official/pipeline.py): each block's forward compiled, the
    # stand-in's check of the lengths made before it; Dynamo's eager backend here (the graphs, not Inductor's kernels).
    x, text = torch.randn(1, 16, 5, 12, 20), torch.randn(1, 512, 64)
    official, tokens = convert.transformer(tiny.transformer), 5 * 6 * 10
    seen = []

    def dit(seq_len: int) -> torch.Tensor:
        with torch.no_grad():
            return official([x[0]], torch.tensor([700.0]), [text[0]], seq_len=seq_len)[0]

    def recorded(forward):
        return lambda *args, **kwargs: seen.append(kwargs["seq_lens"]) or forward(*args, **kwargs)

    plain, plain_padded = dit(tokens), dit(tokens + 8)
    for block in official.blocks:
        block.forward = attention_patch.lengths_checked_outside(recorded(torch.compile(block.forward, backend="eager")))
    whole, padded = dit(tokens), dit(tokens + 8)  # every sample full: no lengths; padded to 8 more: its lengths
    assert err(whole, plain) < 1e-6 and err(padded, plain_padded) < 1e-6
    assert seen[0] is None and [int(n) for n in seen[-1]] == [tokens]
