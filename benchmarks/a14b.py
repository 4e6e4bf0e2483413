"""Full-size Wan2.2-A14B figures on one GPU, through wan-agent's own runtime.

Sections (run any subset; each writes OUT/<section>.json as soon as it is done):
  env        GPU, driver, versions, and the measured ceilings (bf16 matmul, FP8 scaled matmul)
  attention  every diffusers attention backend probed at the clip's self-attention shape
  forward    one expert's forward per rung (eager/compiled, bf16/fp16/FP8, attention) against the FLOP floor
  vae        the VAE decode of one clip per variant (cuDNN autotuning, channels-last, compiled decoder)
  baseline   the 40-step CFG baseline through the trial worker in probe mode (the clip is extrapolated)
  lightning  the converged Lightning configuration, built once: full clips (median, NVML energy, peak
             memory), then probe mode on the same pipeline to check its prediction
Then `--report` turns the JSON files into Markdown (docs/benchmarks.md).

  python benchmarks/a14b.py --out OUT --sections env,attention,forward
  python benchmarks/a14b.py --out OUT --report > docs/benchmarks.md
  python benchmarks/a14b.py --out /tmp/smoke --model tiny --size 48x64x9 --attention native --repeats 2   # CPU smoke
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.hardware import versions  # noqa: E402
from agent.runtime import attention, pipeline, vae_decode  # noqa: E402
from agent.runtime.config import Knobs, Measurement, TrialConfig, Workload  # noqa: E402
from agent.runtime.probe import timer  # noqa: E402
from agent.sources import synthetic  # noqa: E402

PROMPT = "A cat walking on the grass, sunny afternoon, cinematic."
NEGATIVE = "blurry, low quality, static, watermark"


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def timed(fn, repeats: int = 3, warmup: int = 1) -> tuple[float, float]:
    """(first call, median of ``repeats`` later calls) in seconds, CUDA events on a GPU."""
    times = []
    for _ in range(warmup + repeats):
        stop = timer(device())
        fn()
        times.append(stop())
    return times[0], statistics.median(times[warmup:])


def forward_flop(cfg: dict, tokens: int, text_tokens: int = 512) -> dict[str, float]:
    """FLOP of one DiT forward: linear layers, self-attention (QK^T and PV), cross-attention."""
    d, ffn, layers = cfg["num_attention_heads"] * cfg["attention_head_dim"], cfg["ffn_dim"], cfg["num_layers"]
    linear = layers * (2 * tokens * d * d * 6 + 2 * text_tokens * d * d * 2 + 2 * 2 * tokens * d * ffn)
    self_attn = layers * 4 * tokens * tokens * d
    cross = layers * 4 * tokens * text_tokens * d
    return {"linear": linear, "self_attention": self_attn, "cross_attention": cross, "total": linear + self_attn + cross}


def section_env(args) -> dict:
    dev = device()
    info = {"python": platform.python_version(), "versions": versions(), "device": str(dev)}
    if dev.type == "cuda":
        info |= {
            "gpu": torch.cuda.get_device_name(dev),
            "capability": list(torch.cuda.get_device_capability(dev)),
            "torch_cuda": torch.version.cuda,
            "memory_GiB": torch.cuda.get_device_properties(dev).total_memory / 2**30,
        }
        try:
            import pynvml

            pynvml.nvmlInit()
            info["driver"] = pynvml.nvmlSystemGetDriverVersion()
        except Exception as err:
            info["driver"] = f"unknown ({err})"
        n = 8192
        a, b = torch.randn(n, n, device=dev, dtype=torch.bfloat16), torch.randn(n, n, device=dev, dtype=torch.bfloat16)
        _, s = timed(lambda: a @ b, repeats=10, warmup=3)
        info["bf16_matmul_TFLOPs"] = 2 * n**3 / s / 1e12
        a8, b8 = a.to(torch.float8_e4m3fn), b.t().contiguous().t().to(torch.float8_e4m3fn)
        one = torch.tensor(1.0, device=dev)
        try:
            _, s = timed(
                lambda: torch._scaled_mm(a8, b8, scale_a=one, scale_b=one, out_dtype=torch.bfloat16), repeats=10, warmup=3
            )
            info["fp8_matmul_TFLOPs"] = 2 * n**3 / s / 1e12
        except Exception as err:
            info["fp8_matmul_TFLOPs"] = None
            info["fp8_matmul_error"] = str(err)[:200]
    return info


def workload(args) -> Workload:
    h, w, f = (int(x) for x in args.size.split("x"))
    return Workload(prompt=PROMPT, negative_prompt=NEGATIVE, height=h, width=w, frames=f, seed=42)


def section_attention(args) -> dict:
    work, cfg = workload(args), synthetic.preset(args.model).transformer
    shape = attention.self_attention_shape(cfg, work.height, work.width, work.frames)
    probes = [attention.probe(name, shape, torch.bfloat16, device()) for name in attention.known_backends()]
    return {"shape": list(shape), "tolerance": attention.TOLERANCE, "backends": probes}


def _expert(args, dtype: torch.dtype = torch.bfloat16) -> torch.nn.Module:
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    with torch.device(device()), synthetic._default_dtype(torch.bfloat16):  # the same weights for every dtype
        model = WanTransformer3DModel(**synthetic.preset(args.model).transformer).eval()
    return synthetic._placed(model, device(), dtype, keep_fp32=dtype != torch.float32)


def section_forward(args) -> dict:
    """One expert, one forward at the clip's shape, per rung; each rung on top of a fresh bf16 model."""
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, PerTensor, quantize_

    work, cfg = workload(args), synthetic.preset(args.model).transformer
    dev = device()
    tokens = attention.self_attention_shape(cfg, work.height, work.width, work.frames)[1]
    flop = forward_flop(cfg, tokens)
    latent = (1, cfg["in_channels"], (work.frames - 1) // 4 + 1, work.height // 8, work.width // 8)
    t = torch.tensor([999.0], device=dev)
    rungs = [
        ("bf16 eager, native SDPA", dict()),
        ("fp16 eager, native SDPA", dict(dtype=torch.float16)),
        ("fp16 regional compile, cuDNN attention", dict(dtype=torch.float16, compile="regional", attention="_native_cudnn")),
        ("bf16 eager, cuDNN attention", dict(attention="_native_cudnn")),
        ("bf16 regional compile", dict(compile="regional")),
        ("bf16 regional compile, cuDNN attention", dict(compile="regional", attention="_native_cudnn")),
        ("FP8 row-wise eager", dict(fp8=PerRow)),
        ("FP8 row-wise + regional compile", dict(fp8=PerRow, compile="regional")),
        ("FP8 row-wise + regional compile, cuDNN attention", dict(fp8=PerRow, compile="regional", attention="_native_cudnn")),
        (
            "FP8 tensor-wise + regional compile, cuDNN attention",
            dict(fp8=PerTensor, compile="regional", attention="_native_cudnn"),
        ),
        ("bf16 whole-model compile, cuDNN attention", dict(compile="full", attention="_native_cudnn")),
    ]
    reference = None
    results: list[dict] = []
    partial = args.out / "forward.json"  # rewritten after every rung: a run cut short keeps what it measured
    for label, rung in rungs:
        if args.only and not any(k in label for k in args.only.split("|")):
            continue
        torch._dynamo.reset()
        dtype = rung.get("dtype", torch.bfloat16)
        model, forward = _expert(args, dtype), None
        torch.manual_seed(1)  # the same input for every rung, in the rung's dtype
        x = torch.randn(latent, device=dev).to(dtype)
        text = torch.randn(1, 512, cfg["text_dim"], device=dev).to(dtype)
        try:
            if "attention" in rung:
                model.set_attention_backend(rung["attention"])
            if "fp8" in rung:
                fp8 = Float8DynamicActivationFloat8WeightConfig(granularity=rung["fp8"]())
                quantize_(model, fp8, filter_fn=pipeline.fp8_compute_filter)
            if rung.get("compile") == "regional":
                model.compile_repeated_blocks(fullgraph=True)
            elif rung.get("compile") == "full":
                model.compile(fullgraph=True)
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats()

            def forward(model=model, x=x, text=text):  # noqa: F811
                with torch.inference_mode():
                    return model(hidden_states=x, timestep=t, encoder_hidden_states=text, return_dict=False)[0]

            stop = timer(dev)
            out = forward().float()
            first = stop()  # compilation, autotuning and lazy initialisation land here
            _, steady = timed(forward, repeats=args.repeats, warmup=1)
        except Exception as err:  # a rung this machine cannot run is a row that says why
            row = {"rung": label, "error": f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"}
        else:
            if reference is None:
                reference = out
            rel = float((out - reference).norm() / reference.norm())  # reference: the first rung run
            row = {
                "rung": label,
                "first_call_s": first,
                "forward_s": steady,
                "TFLOPs": flop["total"] / steady / 1e12,
                "relative_error_vs_bf16_eager": rel,
            }
            if dev.type == "cuda":
                row["peak_memory_GiB"] = torch.cuda.max_memory_allocated() / 2**30
        print(json.dumps(row), flush=True)
        results.append(row)
        partial.write_text(json.dumps({"tokens": tokens, "flop": flop, "rungs": results, "partial": True}, indent=2))
        del model, forward  # forward holds the model as a default argument
        gc.collect()
        torch.cuda.empty_cache() if dev.type == "cuda" else None
    return {"tokens": tokens, "flop": flop, "rungs": results}


def _vae(args, dtype: torch.dtype = torch.bfloat16):
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    with torch.device(device()), synthetic._default_dtype(dtype):
        return AutoencoderKLWan(**synthetic.preset(args.model).vae).eval()


def _channels_last(vae) -> None:
    for module in vae.modules():
        if isinstance(module, torch.nn.Conv3d):
            module.weight.data = module.weight.data.to(memory_format=torch.channels_last_3d)


def section_vae(args) -> dict:
    """The VAE decode of one clip's latents (21 -> 81 frames) per variant: cuDNN autotuning, channels-last, compile."""
    from torch.utils.flop_counter import FlopCounterMode

    work, dev = workload(args), device()
    cfg = synthetic.preset(args.model).vae
    latent = (1, cfg["z_dim"], (work.frames - 1) // 4 + 1, work.height // 8, work.width // 8)
    variants = [
        ("eager", dict()),
        ("eager, cudnn.benchmark", dict(benchmark=True)),
        ("channels-last 3d, cudnn.benchmark", dict(benchmark=True, channels_last=True)),
        ("compiled decoder, cudnn.benchmark", dict(benchmark=True, compile=True)),
        ("compiled decoder, channels-last 3d, cudnn.benchmark", dict(benchmark=True, compile=True, channels_last=True)),
        ("tiled, cudnn.benchmark", dict(benchmark=True, tiling=True)),
    ]
    torch.manual_seed(2)
    z = torch.randn(latent, device=dev).to(torch.bfloat16)
    flop, reference, rows = None, None, []
    partial = args.out / "vae.json"
    for label, v in variants:
        torch._dynamo.reset()
        torch.backends.cudnn.benchmark = v.get("benchmark", False)
        vae = _vae(args)
        if v.get("channels_last"):
            _channels_last(vae)
        if v.get("tiling"):
            vae.enable_tiling()
        if v.get("compile"):
            vae.decoder.compile(dynamic=False, options=vae_decode.VAE_INDUCTOR_OPTIONS)  # as the runtime does
        zz = z.to(memory_format=torch.channels_last_3d) if v.get("channels_last") else z

        def decode(vae=vae, zz=zz):
            with torch.inference_mode():
                return vae.decode(zz, return_dict=False)[0]

        try:
            if flop is None:
                with FlopCounterMode(display=False) as counter:
                    decode()
                flop = counter.get_total_flops()
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            stop = timer(dev)
            out = decode().float()
            first = stop()
            _, steady = timed(decode, repeats=args.repeats, warmup=1)
        except Exception as err:
            row = {"variant": label, "error": f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"}
        else:
            reference = out if reference is None else reference
            row = {
                "variant": label,
                "first_call_s": first,
                "decode_s": steady,
                "TFLOPs": flop / steady / 1e12,
                "relative_error_vs_eager": float((out - reference).norm() / reference.norm()),
            }
            if dev.type == "cuda":
                row["peak_memory_GiB"] = torch.cuda.max_memory_allocated() / 2**30
        print(json.dumps(row), flush=True)
        rows.append(row)
        partial.write_text(json.dumps({"latent": list(latent), "flop": flop, "variants": rows, "partial": True}, indent=2))
        del vae, decode
        gc.collect()
        torch.cuda.empty_cache() if dev.type == "cuda" else None
    torch.backends.cudnn.benchmark = False
    return {"latent": list(latent), "flop": flop, "variants": rows}


def _trial(args, name: str, knobs: Knobs, mode: str, repeats: int) -> dict:
    from agent.runtime import worker

    out = Path(args.work_dir) / name
    out.mkdir(parents=True, exist_ok=True)
    config = TrialConfig(
        name=name,
        model_path=f"synthetic:{args.model}",
        output_dir=str(out),
        workload=workload(args),
        knobs=knobs,
        measurement=Measurement(warmup=1, repeats=repeats, mode=mode, probe_steps=args.repeats),
    )
    t0 = time.perf_counter()
    result = worker.run(config)
    result["wall_s"] = time.perf_counter() - t0
    for key in ("repeats", "first_call"):
        result.pop(key, None)
    torch._dynamo.reset()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    print(json.dumps({"trial": name, "summary": result["summary"], "memory": result["memory"]}), flush=True)
    return result


def section_lightning(args) -> dict:
    """The converged configuration, built once: full clips (median, energy), then probe mode on the same pipeline."""
    from agent.runtime import probe
    from agent.runtime.generate import encode, generate, summarize
    from agent.telemetry import Nvml

    dev = device()
    knobs = Knobs(
        precision="bf16",
        fp8="torchao_row" if dev.type == "cuda" else "none",
        lightning=True,
        steps=4,
        guidance_scale=1.0,
        guidance_scale_2=1.0,
        flow_shift=5.0,
        compile="regional",
        attention=args.attention,
        vae_decode=args.vae_decode if dev.type == "cuda" else "eager",
    )
    out = Path(args.work_dir) / "lightning"
    out.mkdir(parents=True, exist_ok=True)
    measurement = Measurement(warmup=1, repeats=args.repeats, mode="full", probe_steps=args.repeats)
    config = TrialConfig(
        name="lightning",
        model_path=f"synthetic:{args.model}",
        output_dir=str(out),
        workload=workload(args),
        knobs=knobs,
        measurement=measurement,
    )
    partial = args.out / "lightning.json"
    report: dict = {"config": config.model_dump()}

    def save(**fields) -> None:
        report.update(fields)
        partial.write_text(json.dumps(report, indent=2, default=str))
        print(json.dumps({k: v for k, v in fields.items() if k != "repeats"}, default=str)[:800], flush=True)

    t0 = time.perf_counter()
    pipe, stages, setup = pipeline.build(config, dev)
    save(stages=stages, setup=setup, build_s=time.perf_counter() - t0)
    positive, _, _ = encode(pipe, config, dev)
    t0 = time.perf_counter()
    probe.check_outputs(pipe, config, dev, positive)  # each expert's first call: compilation lands here
    save(first_forwards_s=time.perf_counter() - t0)
    if config.knobs.vae_decode == "compiled":
        save(vae_compile_s=probe.warm_decoder(pipe, config, dev))
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    warm = generate(pipe, config, dev, lambda *_: None)
    save(first_clip=warm.timings())
    nvml = Nvml()
    start = nvml.sample().get("energy_J")
    clips = [generate(pipe, config, dev, lambda *_: None) for _ in range(args.repeats)]
    end = nvml.sample().get("energy_J")
    summary = summarize(clips)
    if start is not None and end is not None:
        summary["energy_per_clip_J"] = (end - start) / len(clips)
    peak = torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else None
    save(summary=summary, repeats=[c.timings() for c in clips], peak_gpu_allocated_GiB=peak)
    positive, negative, _ = encode(pipe, config, dev)
    save(probe=probe.probe(pipe, config, dev, positive, negative, lambda _: None))
    return report


def section_baseline(args) -> dict:
    """The model card's settings (bf16, 40 steps, CFG on both experts) in probe mode: the clip is extrapolated."""
    # VAE tiling so that two bf16 experts, UMT5-XXL and the decode fit in 80 GB.
    knobs = Knobs(precision="bf16", steps=40, guidance_scale=4.0, guidance_scale_2=3.0, flow_shift=3.0, vae_tiling=True)
    return _trial(args, "baseline-probe", knobs, "probe", args.repeats)


SECTIONS = {
    "env": section_env,
    "attention": section_attention,
    "forward": section_forward,
    "vae": section_vae,
    "baseline": section_baseline,
    "lightning": section_lightning,
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--sections", default="env,attention,forward,baseline,lightning")
    p.add_argument("--model", default="a14b")
    p.add_argument("--size", default="480x832x81", help="HxWxFRAMES")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--attention", default="_native_cudnn", help="backend for the Lightning configuration")
    p.add_argument("--vae-decode", default="compiled", help="VAE decode mode for the Lightning configuration")
    p.add_argument("--only", default="", help="|-separated substrings: forward rungs to run")
    p.add_argument("--work-dir", default="/tmp/wan-bench-trials")
    p.add_argument("--report", action="store_true", help="print Markdown from the JSON files in --out")
    args = p.parse_args()
    if args.report:
        from benchmarks.report import render

        print(render(args.out))
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.sections.split(","):
        t0 = time.perf_counter()
        data = SECTIONS[name](args)
        data["section_wall_s"] = time.perf_counter() - t0
        (args.out / f"{name}.json").write_text(json.dumps(data, indent=2, default=str))
        print(f"== {name} done in {data['section_wall_s']:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
