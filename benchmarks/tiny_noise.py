"""How noisy the tiny model's figures are on a CPU machine: the numbers behind tiny.yaml's measurement settings
and the fidelity gate's noise (README). Writes one JSON file with the hardware and versions beside the figures.

    python benchmarks/tiny_noise.py --out benchmarks/results/cpu-2026-11-26/tiny_noise.json   # ~1 min on 2 cores

- noise: the experts' output moved by a half-ulp input perturbation (what reference trials measure), against the
  bf16 pipeline's own error versus fp32, and against what the Lightning LoRA changes;
- threads: tiny clips with 1 and 2 torch threads, on an idle machine and beside a CPU burner on every core;
- processes: the same full-mode trial in fresh worker processes, one after another (each process's median).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent import hardware, sources  # noqa: E402
from agent.files import write_json_atomic  # noqa: E402
from agent.quality import relative_error  # noqa: E402
from agent.runtime import pipeline, probe  # noqa: E402
from agent.runtime.config import Knobs, LoraFiles, Measurement, TrialConfig, Workload  # noqa: E402
from agent.runtime.generate import encode, generate  # noqa: E402

CPU = torch.device("cpu")
WORK = Workload(prompt="A cat walking on the grass", height=48, width=64, frames=9, seed=7)


def config(model, out: str, **knobs) -> TrialConfig:
    lora = LoraFiles(**model.lora) if knobs.get("lightning") else None
    return TrialConfig(name="t", model_path=model.path, output_dir=out, lora=lora, workload=WORK, knobs=Knobs(**knobs))


def noise(model) -> dict:
    def outputs(cfg: TrialConfig) -> tuple[dict, dict]:
        pipe, _, _ = pipeline.build(cfg, CPU)
        positive, _, _ = encode(pipe, cfg, CPU)
        check, _ = probe.check_outputs(pipe, cfg, CPU, positive)
        check["vae_frame"] = probe.check_decode(pipe, cfg, CPU)
        return check, probe.numerical_noise(pipe, cfg, CPU, positive, check)

    bf16, measured = outputs(config(model, "/tmp", precision="bf16"))
    fp32, _ = outputs(config(model, "/tmp", precision="fp32"))
    lora, _ = outputs(config(model, "/tmp", precision="bf16", lightning=True))
    points = [k for k in bf16 if k.startswith("transformer")]
    return {
        "perturbation_noise": measured,
        "bf16_vs_fp32": {k: relative_error(bf16[k], fp32[k]) for k in points},
        "lightning_vs_base": {k: relative_error(lora[k], bf16[k]) for k in points},
    }


def clips(model, threads: int, count: int = 5) -> dict:
    torch.set_num_threads(threads)
    out = {}
    lightning_like = {"steps": 4, "guidance_scale": 1.0, "guidance_scale_2": 1.0}
    for label, knobs in (("12 steps, CFG", {"steps": 12}), ("4 steps", lightning_like)):
        cfg = config(model, "/tmp", precision="bf16", **knobs)
        pipe, _, _ = pipeline.build(cfg, CPU)
        generate(pipe, cfg, CPU, lambda *_: None)
        out[label] = [generate(pipe, cfg, CPU, lambda *_: None).total_s for _ in range(count)]
    return out


def threads(model) -> dict:
    result = {f"idle, {n} thread(s)": clips(model, n) for n in (1, 2)}
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 2)]
    try:
        result |= {f"a burner per core, {n} thread(s)": clips(model, n) for n in (1, 2)}
    finally:
        for burner in burners:
            burner.kill()
    return result


def processes(model, count: int = 4) -> list[dict]:
    """The same trial in ``count`` fresh worker processes (2 threads, torch's default here): each one's clips."""
    made = []
    for i in range(count):
        out = Path(tempfile.mkdtemp(prefix="tiny-noise-"))
        cfg = config(model, str(out), precision="bf16", steps=4, guidance_scale=1.0, guidance_scale_2=1.0)
        cfg = cfg.model_copy(update={"measurement": Measurement(warmup=1, repeats=5)})
        (out / "trial.json").write_text(cfg.model_dump_json())
        subprocess.run([sys.executable, "-m", "agent.runtime.worker", str(out / "trial.json")], capture_output=True, check=True)
        summary = json.loads((out / "result.json").read_text())["summary"]
        made.append({"process": i, "median_s": summary["generate_s"], "clips_s": summary["samples_s"]})
    return made


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    model = sources.resolve("synthetic:tiny", Path(os.environ.get("WAN_AGENT_CACHE", "runs/.cache")))
    started = time.time()
    report = {"hardware": hardware.probe(), "versions": hardware.versions(), "workload": WORK.model_dump()}
    report["noise"] = noise(model)
    report["threads"] = threads(model)
    report["processes"] = processes(model)
    medians = [p["median_s"] for p in report["processes"]]
    report["processes_slowest_over_fastest"] = max(medians) / min(medians)
    report["threads_median_s"] = {k: {c: statistics.median(v) for c, v in d.items()} for k, d in report["threads"].items()}
    report["wall_s"] = time.time() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out, report)
    print(json.dumps({k: report[k] for k in ("noise", "threads_median_s", "processes_slowest_over_fastest")}, indent=1))


if __name__ == "__main__":
    main()
