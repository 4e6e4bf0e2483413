"""The runtime in-process on the tiny pipeline: per-expert CFG, memory planning, probe vs full clip."""

import copy
import os
import statistics
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from agent import sources
from agent.runtime import attention, memory, pipeline, probe, vae_decode
from agent.runtime.config import CarriedSteps, Knobs, Measurement, TrialConfig, Workload
from agent.runtime.generate import decode, encode, generate
from agent.sources import synthetic

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def model() -> sources.ModelFiles:
    return sources.resolve("synthetic:tiny", Path(os.environ["WAN_AGENT_CACHE"]))


@pytest.fixture
def one_thread():
    """As the tiny playbook's trials compute (measurement.cpu_threads): steady timings on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def config(model, tmp_path, **knobs) -> TrialConfig:
    return TrialConfig(
        name="t",
        model_path=model.path,
        output_dir=str(tmp_path),
        workload=Workload(prompt="A cat walking on the grass", height=48, width=64, frames=9, seed=7),
        knobs=Knobs(**{"precision": "fp32", "steps": 8} | knobs),
        measurement=Measurement(warmup=1, repeats=1, probe_steps=3),
    )


def count_forwards(module: torch.nn.Module) -> list[int]:
    calls = [0]
    module.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_an_expert_at_guidance_one_skips_its_unconditional_forward(model, tmp_path):
    cfg = config(model, tmp_path, guidance_scale=4.0, guidance_scale_2=1.0)
    pipe, _, _ = pipeline.build(cfg, CPU)
    high, low = count_forwards(pipe.transformer), count_forwards(pipe.transformer_2)
    skipped = generate(pipe, cfg, CPU, lambda *_: None)
    steps = probe.expert_steps(pipe, 8)
    assert high[0] == 2 * len(steps["transformer"])  # CFG: conditional + unconditional
    assert low[0] == len(steps["transformer_2"])  # guidance 1: conditional only
    # Against diffusers' own behaviour (unconditional forward weighted by ~0): the same clip.
    nearly_one = cfg.model_copy(update={"knobs": cfg.knobs.model_copy(update={"guidance_scale_2": 1.0 + 1e-6})})
    reference = generate(pipe, nearly_one, CPU, lambda *_: None)
    assert low[0] == len(steps["transformer_2"]) * 3
    assert np.abs(skipped.frames.astype(int) - reference.frames).max() <= 1  # 8-bit rounding


@pytest.mark.parametrize("knobs", [{"steps": 12}, {"steps": 4, "guidance_scale": 1.0, "guidance_scale_2": 1.0}])
def test_a_full_clip_lands_within_the_probes_stated_error(model, tmp_path, knobs, one_thread):
    # What the probe leaves out is fixed per clip: the pipeline's set-up (~3 ms) and its return after the last step
    # (counted in the clip since after_steps_s), together 10-15 % of a 50 ms tiny clip; at full size they vanish.
    cfg = config(model, tmp_path, precision="bf16", **knobs)
    pipe, _, _ = pipeline.build(cfg, CPU)
    positive, negative, _ = encode(pipe, cfg, CPU)
    report = probe.probe(pipe, cfg, CPU, positive, negative, lambda _: None)
    predicted = statistics.median(report["clip_samples_s"])
    error = probe.prediction_error(report["clip_samples_s"], tolerance=0.25)
    generate(pipe, cfg, CPU, lambda *_: None)  # warm-up, as full mode does
    clips = [generate(pipe, cfg, CPU, lambda *_: None) for _ in range(5)]
    assert report["steps"] == {name: clips[0].step_expert.count(name) for name in ("transformer", "transformer_2")}
    measured = statistics.median(c.total_s for c in clips)
    assert abs(measured - predicted) / predicted <= error, (measured, predicted, error)
    assert error < 0.5  # a statement, not a shrug


def test_the_probe_counts_the_expert_swaps_of_model_offload(model, tmp_path, one_thread):
    # On a GPU a clip under model offload moves each expert in and out once (46 s on an H100 for the A14B's official
    # runtime); the probe times one step of each expert again right after the other's. On a CPU nothing moves.
    cfg = config(model, tmp_path, precision="bf16", steps=6)
    pipe, _, _ = pipeline.build(cfg, CPU)
    positive, negative, _ = encode(pipe, cfg, CPU)
    report = probe.probe(pipe, cfg, CPU, positive, negative, lambda _: None, offload="model")
    assert set(report["swap_s"]) == {"transformer", "transformer_2"} and min(report["swap_s"].values()) >= 0
    swaps = sum(report["swap_s"].values())
    for i, clip in enumerate(report["clip_samples_s"]):
        steps = sum(report["steps"][n] * report["step_samples_s"][n][i] for n in report["step_samples_s"])
        text, decode = report["text_encode_samples_s"][i], report["vae_decode_samples_s"][i]
        assert clip == pytest.approx(text + steps + decode + swaps)
    assert "swap_s" not in probe.probe(pipe, cfg, CPU, positive, negative, lambda _: None)


def test_a_clips_timings_account_for_its_wall_time(model, tmp_path, one_thread):
    cfg = config(model, tmp_path, precision="bf16")
    pipe, _, _ = pipeline.build(cfg, CPU)
    generate(pipe, cfg, CPU, lambda *_: None)
    t0 = time.perf_counter()
    clip = generate(pipe, cfg, CPU, lambda *_: None)
    wall_s = time.perf_counter() - t0
    assert 0.9 * wall_s <= clip.total_s <= wall_s  # nothing left out, nothing counted twice


def test_offload_on_cpu_is_refused_and_auto_stays_put(model, tmp_path):
    cfg = config(model, tmp_path)
    skeleton = synthetic.build_pipeline("tiny", 0, device="meta")
    assert memory.choose("auto", skeleton, cfg, CPU)[0] == "none"
    with pytest.raises(memory.UnsupportedOnHardware, match="offload=model needs an accelerator"):
        memory.choose("model", skeleton, cfg, CPU)


def test_memory_estimates_for_the_full_size_model():
    skeleton = synthetic.build_pipeline("a14b", 0, device="meta", dtype=torch.bfloat16)  # no memory taken
    expert = memory.module_bytes(skeleton.transformer)
    assert expert / 2**30 == pytest.approx(26.6, rel=0.02)  # 14.29 B parameters in bf16 (some kept fp32)
    work = Workload(prompt="x", height=480, width=832, frames=81, seed=0)
    need = memory.needs(skeleton, work, vae_tiling=False, fp8=False, text_encoder_on_cpu=False)
    # Two experts + UMT5-XXL + the decode's peak: 68.7 GiB measured untiled on an H100, which it fits (90 % of 78.7).
    assert 67 * 2**30 < need["none"] < 0.9 * 78.7 * 2**30
    assert need["model"] < need["none"] and need["sequential"] <= need["group"] <= need["model"]
    # The official DiT (float32 residual, float64 RoPE) peaked at 78.5 GiB resident on an H200 and ran out of memory
    # on the H100; with one expert at a time it peaked at 41.1 GiB there.
    official = memory.needs(skeleton, work, False, False, False, memory.OFFICIAL_DIT_ACTIVATION_FACTOR)
    assert official["none"] / 2**30 == pytest.approx(78.5, abs=1.0) and official["none"] > 0.9 * 78.7 * 2**30
    assert official["model"] / 2**30 == pytest.approx(41.1, abs=1.0)
    fp8 = memory.needs(skeleton, work, vae_tiling=True, fp8=True, text_encoder_on_cpu=True)
    assert fp8["none"] < need["none"] - 30 * 2**30


def test_memory_estimates_for_the_5b():
    skeleton = synthetic.build_pipeline("5b", 0, device="meta", dtype=torch.bfloat16)
    assert skeleton.transformer_2 is None and skeleton.config.expand_timesteps
    params = sum(p.numel() for p in skeleton.transformer.parameters())
    assert params / 1e9 == pytest.approx(5.0, rel=0.02)  # Wan2.2-TI2V-5B: 4.9998 B
    assert skeleton.vae_scale_factor_spatial == 16 and skeleton.vae.config.z_dim == 48
    shape = attention.self_attention_shape(dict(skeleton.transformer.config), 704, 1280, 121, 16, 4)
    assert shape == (1, 27_280, 24, 128)  # 31 latent frames of 44 x 80 latents in 2 x 2 patches
    work = Workload(prompt="x", height=704, width=1280, frames=121, seed=0)
    need = memory.needs(skeleton, work, vae_tiling=True, fp8=False, text_encoder_on_cpu=False)
    # One 10 GB transformer, UMT5-XXL, and 27,280 tokens of activations: a 40 GB card holds it all.
    assert 25 * 2**30 < need["none"] < 40 * 2**30 and need["model"] < need["none"]


def test_the_probe_feeds_the_5b_what_its_pipeline_feeds_it(tmp_path):
    # With expand_timesteps the pipeline passes a timestep per latent token, and the model computes a modulation per
    # token: a probe passing one timestep would time (and check) lighter work than a clip does.
    five = sources.resolve("synthetic:tiny-5b", Path(os.environ["WAN_AGENT_CACHE"]))
    cfg = config(five, tmp_path, steps=2).model_copy(
        update={"workload": Workload(prompt="A cat", height=64, width=64, frames=9, seed=7)}
    )
    pipe, _, _ = pipeline.build(cfg, CPU)
    seen: list[tuple] = []
    pipe.transformer.register_forward_pre_hook(lambda _m, _a, kw: seen.append(tuple(kw["timestep"].shape)), with_kwargs=True)
    generate(pipe, cfg, CPU, on_step=lambda *_: None)
    positive, _, _ = encode(pipe, cfg, CPU)
    probe.check_outputs(pipe, cfg, CPU, positive)
    assert seen[0] == (1, 3 * 2 * 2)  # 3 latent frames of 4x4 latents, in 2x2 patches
    assert set(seen) == {seen[0]}


def test_direct_build_keeps_diffusers_fp32_modules():
    pipe = synthetic.build_pipeline("tiny", 0, device="cpu", dtype=torch.bfloat16)
    assert pipe.transformer.proj_out.weight.dtype == torch.bfloat16
    assert pipe.transformer.scale_shift_table.dtype == torch.float32
    assert pipe.transformer.condition_embedder.time_embedder.linear_1.weight.dtype == torch.float32


def test_the_diffusers_runtime_refuses_the_official_runtimes_fsdp(model, tmp_path):
    with pytest.raises(memory.UnsupportedOnHardware, match="fsdp is runtime official's"):  # never quietly ignored
        pipeline.build(config(model, tmp_path, ulysses=2, fsdp=True), CPU)


def test_channels_last_vae_decodes_the_same_clip(model, tmp_path):
    # The layout, the causal convolutions' padding done by the convolution and the fused RMS norm change which
    # kernels run, not the function. (The compiled decoder is measured on the GPU: tests/gpu and docs/benchmarks.md;
    # compiling it on 2 CPU cores takes a minute.)
    eager, _, _ = pipeline.build(config(model, tmp_path), CPU)
    tuned, _, _ = pipeline.build(config(model, tmp_path, vae_decode="channels_last"), CPU)
    conv_in = tuned.vae.decoder.conv_in
    assert conv_in.weight.is_contiguous(memory_format=torch.channels_last_3d)
    assert (eager.vae.decoder.conv_in.padding, conv_in.padding, conv_in._time_padding) == ((0, 0, 0), (0, 1, 1), 2)
    assert tuned.vae.decoder.norm_out.forward.__func__ is vae_decode._fused_rms_norm
    latents = torch.randn(1, 16, 3, 6, 8, generator=torch.Generator().manual_seed(0))
    (a, _), (b, _) = decode(eager, latents), decode(tuned, latents)
    assert a.shape == (9, 48, 64, 3) and a.dtype == np.uint8
    assert np.abs(a.astype(int) - b).max() <= 1


@pytest.mark.parametrize("preset", ["tiny", "tiny-5b"])  # the Wan2.1 VAE's shape (A14B) and the Wan2.2 VAE's (5B)
def test_the_decoders_time_upsampling_computes_diffusers_update_without_comparing_a_tensor_with_a_string(preset):
    # diffusers marks a first chunk's cache "Rep" and tests `tensor == "Rep"`, which torch 2.11's Dynamo cannot trace:
    # the decoder then compiled in 27 pieces (tests/gpu/test_cuda.py checks it is traced whole). The update made with
    # isinstance must be the same, chunk after chunk: the first (no cache), one after "Rep", then cached ones, of one
    # frame (a cached frame goes before it) and of two.
    from diffusers import AutoencoderKLWan

    original = AutoencoderKLWan(**synthetic.preset(preset).vae).eval()
    traceable = copy.deepcopy(original)
    vae_decode.tune_vae(traceable, "channels_last")
    modules = zip(original.decoder.modules(), traceable.decoder.modules(), strict=True)
    pairs = [(a, b) for a, b in modules if getattr(a, "mode", "") == "upsample3d"]
    assert pairs and all(b.forward.__func__ is vae_decode._resample_traceably for _, b in pairs)
    for theirs_module, ours_module in pairs:
        caches: tuple[list, list] = ([None], [None])
        for chunk, frames in enumerate((1, 1, 2, 1, 1)):
            x = torch.randn(1, theirs_module.dim, frames, 4, 6, generator=torch.Generator().manual_seed(chunk))
            indices: tuple[list, list] = ([0], [0])
            with torch.inference_mode():
                theirs = type(theirs_module).forward(theirs_module, x, feat_cache=caches[0], feat_idx=indices[0])
                ours = ours_module(x, feat_cache=caches[1], feat_idx=indices[1])
            assert torch.equal(ours, theirs) and indices == ([1], [1])
            assert type(caches[0][0]) is type(caches[1][0])
            assert isinstance(caches[0][0], str) or torch.equal(caches[0][0], caches[1][0])


def test_checked_steps_cycle_the_check_timesteps_and_check_an_expert_the_clip_does_not_run(model, tmp_path, one_thread):
    # Five timed steps over three check timesteps; one step only, which the high-noise expert takes: the low-noise
    # expert's check outputs are still computed (the gate compares them), untimed.
    cfg = config(model, tmp_path, precision="bf16", steps=1).model_copy(
        update={"measurement": Measurement(warmup=1, repeats=1, probe_steps=5)}
    )
    pipe, _, _ = pipeline.build(cfg, CPU)
    positive, negative, _ = encode(pipe, cfg, CPU)
    assert probe.expert_steps(pipe, 1) == {"transformer": [999.0], "transformer_2": []}
    high, low = count_forwards(pipe.transformer), count_forwards(pipe.transformer_2)
    checks, timed = probe.checked_steps(pipe, cfg, CPU, positive, negative, lambda _: None)
    separate, _ = probe.check_outputs(pipe, cfg, CPU, positive)
    assert (high[0], low[0]) == (2 * (1 + 5) + 3, 3 + 3)  # CFG: warm-up, 5 timed; then check_outputs' own 3 of each
    assert checks.keys() == separate.keys() and all(np.array_equal(checks[k], separate[k]) for k in separate)
    assert list(timed["step_samples_s"]) == ["transformer"] and len(timed["step_samples_s"]["transformer"]) == 5


def test_a_second_experts_first_step_is_untimed_only_where_it_proves_cold(model, tmp_path, one_thread):
    # The second expert runs the first's code: its first step is a sample, unless it is slower than its others by
    # more than probe.COLD_MARGIN (a recompile, a swap onto the GPU; here a first call held up on purpose).
    cfg = config(model, tmp_path, precision="bf16", steps=6, guidance_scale=1.0, guidance_scale_2=1.0)
    pipe, _, _ = pipeline.build(cfg, CPU)
    positive, negative, _ = encode(pipe, cfg, CPU)
    count, calls = cfg.measurement.probe_steps, count_forwards(pipe.transformer_2)  # counted before the hook below
    held = pipe.transformer_2.register_forward_pre_hook(lambda *_: time.sleep(0.5) if calls[0] == 1 else None)
    _, timed = probe.checked_steps(pipe, cfg, CPU, positive, negative, lambda _: None)
    held.remove()
    assert calls[0] == count + 1  # the held-up step, then count timed ones
    assert timed["first_step_s"]["transformer_2"] > 0.5 > max(timed["step_samples_s"]["transformer_2"])
    assert len(timed["step_samples_s"]["transformer_2"]) == count


def test_a_first_decode_is_untimed_only_where_it_proves_cold(model, tmp_path, one_thread):
    # The clip's decodes: the first is a sample unless slower than the others by more than probe.COLD_MARGIN (cuDNN
    # autotuning a new layout; here a first call held up on purpose), then untimed with one more decode after it.
    cfg = config(model, tmp_path, precision="bf16", steps=2, guidance_scale=1.0, guidance_scale_2=1.0)
    pipe, _, _ = pipeline.build(cfg, CPU)
    positive, negative, _ = encode(pipe, cfg, CPU)
    count, decodes = cfg.measurement.probe_steps, count_forwards(pipe.vae.post_quant_conv)  # once a decode
    held = pipe.vae.post_quant_conv.register_forward_pre_hook(lambda *_: time.sleep(0.5) if decodes[0] == 1 else None)
    report = probe.probe(pipe, cfg, CPU, positive, negative, lambda _: None)
    held.remove()
    assert decodes[0] == count + 1 and len(report["vae_decode_samples_s"]) == count
    assert report["vae_first_decode_s"] > 0.5 > max(report["vae_decode_samples_s"])
    # One timed decode cannot show its first call warm: one untimed before it, always.
    one = cfg.model_copy(update={"measurement": Measurement(warmup=1, repeats=1, probe_steps=1)})
    report = probe.probe(pipe, one, CPU, positive, negative, lambda _: None)
    assert decodes[0] == count + 1 + 2 and len(report["vae_decode_samples_s"]) == 1 and "vae_first_decode_s" in report


def test_the_probe_times_the_check_outputs_steps_and_runs_carried_experts_not_at_all(model, tmp_path, one_thread):
    cfg = config(model, tmp_path, precision="bf16", steps=6, guidance_scale=4.0, guidance_scale_2=1.0)
    pipe, _, _ = pipeline.build(cfg, CPU)
    positive, negative, _ = encode(pipe, cfg, CPU)
    count = cfg.measurement.probe_steps
    separate, _ = probe.check_outputs(pipe, cfg, CPU, positive)
    high, low = count_forwards(pipe.transformer), count_forwards(pipe.transformer_2)
    # One untimed step of the first expert, then the timed ones at its check timesteps (CFG: two forwards a step),
    # whose conditional forwards are the check outputs: the same as computed on their own. The second expert's first
    # step is timed unless it proves cold (on a busy CPU it may: then one step more).
    checks, timed = probe.checked_steps(pipe, cfg, CPU, positive, negative, lambda _: None)
    second = low[0]
    assert high[0] == 2 * (1 + count) and second in (count, count + 1)
    assert checks.keys() == separate.keys()
    assert all(np.array_equal(checks[k], separate[k]) for k in separate)
    assert all(len(s) == count for s in timed["step_samples_s"].values())
    warm = probe.probe(pipe, cfg, CPU, positive, negative, lambda _: None, timed=timed)
    assert (high[0], low[0]) == (2 * (1 + count), second)  # no expert forward more
    assert warm["step_s"] == timed["step_s"] and warm["offload"] == "none"
    cold = probe.probe(pipe, cfg, CPU, positive, negative, lambda _: None)  # not timed before: one untimed step first
    assert high[0] == 2 * (1 + count) * 2 and low[0] - second in (count, count + 1)
    assert len(cold["step_samples_s"]["transformer"]) == count
    high[0], low[0] = 2 * (1 + count) * 2, (1 + count) * 2  # as counted below
    # Another trial's experts, unchanged: the median of its timed steps stands for each step here, and no forward runs.
    steps = {"transformer": [0.5, 0.9, 0.7], "transformer_2": [0.25, 0.35]}
    carried = CarriedSteps(
        trial="03-best",
        dir=str(tmp_path),
        offload="none",
        step_samples_s=steps,
    )
    report = probe.probe(pipe, cfg, CPU, positive, negative, lambda _: None, carried=carried)
    assert (high[0], low[0]) == (2 * (1 + count) * 2, (1 + count) * 2)
    assert report["steps_from"] == "03-best" and report["step_s"] == {"transformer": 0.7, "transformer_2": 0.3}
    assert "first_step_s" not in report  # their first calls were the other trial's
    assert report["step_samples_s"] == {"transformer": [0.7] * count, "transformer_2": [0.3] * count}
    for i, clip in enumerate(report["clip_samples_s"]):
        expected = report["steps"]["transformer"] * 0.7 + report["steps"]["transformer_2"] * 0.3
        assert clip == pytest.approx(report["text_encode_samples_s"][i] + expected + report["vae_decode_samples_s"][i])
