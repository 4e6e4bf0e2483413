"""The official Wan2.2 runtime against the diffusers one, side by side: each pair of trials runs the same workload and
knobs through the real worker (one process per trial, as the agent runs them), on a synthetic model built on the GPU.
`baseline` is the playbook's 40-step CFG baseline, timed in probe mode (the clip is predicted from per-expert steps);
`lightning` is the Lightning rung as whole clips. Both untiled: the reference VAE has no tiled decode. diffusers keeps
its weights resident; the official runtime takes `offload: auto`, which offloads as the reference code does (one
expert on the GPU at a time) where its larger activations do not fit beside both experts (an 80 GB H100). Writes
OUT/official_vs_diffusers.json with the hardware and versions, and each trial's result.json under OUT/trials/.

    python benchmarks/official_vs_diffusers.py --out OUT --pairs baseline             # ~5 min on an H100
    python benchmarks/official_vs_diffusers.py --out OUT --pairs lightning            # ~4 min
    python benchmarks/official_vs_diffusers.py --out OUT --report     # Markdown for docs/benchmarks.md
    python benchmarks/official_vs_diffusers.py --out OUT --model tiny --size 96x160x17 --fp32-reference   # seconds
    python benchmarks/official_vs_diffusers.py --out /tmp/smoke --model tiny --playbook tiny --size 48x64x9 --device cpu \
        --knobs '{"precision": "fp32"}'
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent import hardware, playbook, trials  # noqa: E402
from agent.files import write_json_atomic  # noqa: E402
from agent.runtime.config import Knobs, Measurement, TrialConfig  # noqa: E402
from agent.runtime.worker import check_errors, checks  # noqa: E402

SUMMARY = ("generate_s", "text_encode_s", "denoise_s", "vae_decode_s", "step_s", "spread_s", "repeats", "predicted")


def pair_knobs(book: playbook.Playbook, pair: str, extra: dict, repeats: int) -> tuple[Knobs, Measurement]:
    knobs = Knobs(**book.baseline.model_dump() | {"vae_tiling": False, "offload": "none"} | extra)
    if pair == "baseline":
        return knobs, Measurement(mode="probe", warmup=1, probe_steps=3)
    rung = next(r for r in book.ladder if r.name == "lightning")
    return knobs.model_copy(update=rung.set), Measurement(mode="full", warmup=1, repeats=repeats)


def run_trial(out: Path, config: TrialConfig, timeout: float) -> dict:
    trials.prepare(out, config)
    with open(out / "stdout.log", "w") as log:
        code = subprocess.run([sys.executable, "-m", "agent.runtime.worker", str(out / "trial.json")], stdout=log,
                              stderr=subprocess.STDOUT, timeout=timeout).returncode  # fmt: skip
    result = json.loads((out / "result.json").read_text())
    print(f"{out.name}: exit {code}, {result.get('summary', {}).get('generate_s')} s per clip", flush=True)
    return result


def markdown(data: dict) -> str:
    """The side-by-side table of docs/benchmarks.md, from the JSON this script wrote."""
    gpus = data["hardware"]["gpus"]
    v, w = data["versions"], data["workload"]
    machine = (
        f"{gpus[0]['name']}** ({gpus[0]['memory_GiB']} GiB, driver {gpus[0]['driver']}, CUDA {gpus[0]['driver_cuda']})"
        if gpus
        else "CPU**"
    )
    lines = [
        f"Measured on **{machine}, torch "
        f"{v['torch']}, diffusers {v['diffusers']}, wan22 2.2.11; `{data['model']}` (random weights: synthetic-weight figures), "
        f"{w['width']}×{w['height']}, {w['frames']} frames; both runtimes untiled (the reference VAE has no tiled decode).",
        "",
        "| configuration | runtime | clip | text encoding | denoising (per step) | VAE decode | peak GPU memory "
        "| check error vs diffusers |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for pair, runs in data["pairs"].items():
        how = "40 steps, CFG; predicted from probe mode" if pair == "baseline" else "Lightning 4 steps; full clips, median"
        for runtime in ("diffusers", "official"):
            if runs[runtime]["status"] != "ok":
                lines.append(f"| {pair} | {runtime} | failed: {runs[runtime]['error']} | | | | | |")
                continue
            s, mem = runs[runtime]["summary"], runs[runtime]["memory"]
            memory = (
                f"{mem['peak_gpu_allocated_GiB']:.1f} GiB"
                if "peak_gpu_allocated_GiB" in mem
                else f"{mem['peak_rss_GiB']:.1f} GiB RSS"
            )
            errors = (runs[runtime]["fidelity"] or {}).get("relative_error") or {}
            worst = f"{max(errors.values()):.1e} (worst expert output)" if errors else "reference"
            offload = (runs[runtime].get("setup") or {}).get("offload", "none")
            label = runtime if offload == "none" else f"{runtime} (offload {offload}: one expert on the GPU at a time)"
            lines.append(
                f"| {pair}: {how} | {label} | **{s['generate_s']:.2f} s** | {s['text_encode_s']:.2f} s | "
                f"{s['denoise_s']:.2f} s ({s['step_s']:.2f} s) | {s['vae_decode_s']:.2f} s | "
                f"{memory} | {worst} |"
            )
    for pair, runs in data["pairs"].items():
        if "against_fp32" in runs:
            worst = {label: max(errors.values()) for label, errors in runs["against_fp32"].items()}
            lines.append(f"\n{pair}: worst expert check output against diffusers in fp32: "
                         + ", ".join(f"{label} {value:.1e}" for label, value in worst.items()) + ".")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--pairs", default="baseline,lightning")
    p.add_argument("--model", default="a14b", help="synthetic preset")
    p.add_argument("--playbook", default="a14b", help="whose workload, baseline and Lightning rung to use")
    p.add_argument("--size", help="HxWxFRAMES instead of the playbook's (smoke runs)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--knobs", default="{}", help='JSON set on both runtimes, e.g. \'{"precision": "fp32"}\' on a CPU')
    p.add_argument("--timeout", type=float, default=1200)
    p.add_argument("--repeats", type=int, default=2, help="timed clips of a full-clip pair (after one warm-up)")
    p.add_argument("--fp32-reference", action="store_true", help="also run diffusers in fp32 (small models: it must fit)")
    p.add_argument("--report", action="store_true", help="print Markdown from OUT/official_vs_diffusers.json")
    args = p.parse_args()
    if args.report:
        print(markdown(json.loads((Path(args.out) / "official_vs_diffusers.json").read_text())))
        return
    book = playbook.load(args.playbook)
    workload = book.workload
    if args.size:
        h, w, f = (int(x) for x in args.size.split("x"))
        workload = workload.model_copy(update={"height": h, "width": w, "frames": f})
    out = Path(args.out)
    report: dict = {"hardware": hardware.probe(), "versions": hardware.versions(), "model": f"synthetic:{args.model}",
                    "workload": workload.model_dump(), "pairs": {}}  # fmt: skip
    for pair in args.pairs.split(","):
        knobs, measurement = pair_knobs(book, pair, json.loads(args.knobs), args.repeats)
        figures = {}
        official = {"runtime": "official", "offload": json.loads(args.knobs).get("offload", "auto")}
        runs = [("diffusers", {}), ("official", official)] + ([("fp32", {"precision": "fp32"})] if args.fp32_reference else [])
        for label, change in runs:
            name = f"{pair}-{label}"
            config = TrialConfig(
                name=name,
                model_path=f"synthetic:{args.model}",
                device=args.device,
                output_dir=str(out / "trials" / name),
                workload=workload,
                knobs=knobs.model_copy(update=change),
                measurement=measurement,
                reference_dir=str(out / "trials" / f"{pair}-diffusers") if label == "official" else None,
            )
            result = run_trial(out / "trials" / name, config, args.timeout)
            figures[label] = {
                "status": result["status"],
                "error": result.get("error", {}).get("message"),
                "summary": {k: result.get("summary", {}).get(k) for k in SUMMARY},
                "stages": result.get("stages"),
                "memory": result.get("memory"),
                "fidelity": result.get("fidelity"),
                "setup": result.get("setup"),
                "device": result.get("device"),
            }
        if args.fp32_reference:  # which runtime's rounding lands nearer the same model computed in fp32
            fp32 = checks(out / "trials" / f"{pair}-fp32")
            ok = [label for label in ("diffusers", "official") if figures[label]["status"] == "ok"]
            figures["against_fp32"] = {label: check_errors(checks(out / "trials" / f"{pair}-{label}"), fp32) for label in ok}
        report["pairs"][pair] = {"knobs": knobs.model_dump(), "measurement": measurement.model_dump(), **figures}
        write_json_atomic(out / "official_vs_diffusers.json", report)


if __name__ == "__main__":
    main()
