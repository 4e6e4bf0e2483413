"""`report.html`: one self-contained page per run (charts and frames inlined as PNG, no network), built from the run
directory alone (journal.jsonl, run.json, best.yaml, each trial's telemetry.csv and frames.npy) through a Jinja2
template. Written at the end of a run beside journal.md, and by `wan-agent report RUN` at any time, a run in
progress included.
"""

from __future__ import annotations

import base64
import shlex
from pathlib import Path

import yaml
from jinja2 import Environment, FileSystemLoader, select_autoescape

from agent.compare import load
from agent.files import read_json, write_text_atomic
from agent.history import COMPARISON_FILE
from agent.report import charts

TEMPLATES = Path(__file__).resolve().parent / "templates"
REPORT_FILE = "report.html"


def _data_uri(png: bytes | None) -> str | None:
    return "data:image/png;base64," + base64.b64encode(png).decode() if png else None


def _fidelity(record: dict) -> dict[str, str]:
    """The figures against the reference trial, in words: the worst expert output, and the frames' PSNR and SSIM."""
    shown = {"reference": str(record["reference"])} if "reference" in record else {}
    if record.get("relative_error"):
        worst = max(record["relative_error"].items(), key=lambda kv: kv[1])
        shown["transformer output"] = f"relative error {worst[1]:.1e} (worst: {worst[0]})"
    if record.get("comparable") and record.get("psnr_dB") is not None:
        shown["frames"] = f"PSNR {record['psnr_dB']:.1f} dB, SSIM {record.get('ssim', float('nan')):.4f}"
    return shown


def _trial(event: dict, run_dir: Path) -> dict:
    """What the page shows of one decision: the journal's record, its traces and frames."""
    trial_dir = run_dir / "trials" / event["name"]
    telemetry = event.get("telemetry") or {}
    figures = [
        ("clip", f"{event['generate_s']:.3f} s" + (" (predicted from probe-mode steps)" if event.get("predicted") else "")),
        ("repeats", f"{len(event.get('samples_s') or [])}, spread {event.get('spread_s', 0):.3f} s"),
        ("text encoding", f"{event.get('text_encode_s', 0):.3f} s"),
        ("denoising", f"{event.get('denoise_s', 0):.3f} s ({1000 * (event.get('step_s') or 0):.1f} ms/step)"),
        ("VAE decode", f"{event.get('vae_decode_s', 0):.3f} s"),
    ] if event.get("generate_s") else []  # fmt: skip
    figures += [(stage.removesuffix("_s").replace("_", " "), f"{s:.3f} s") for stage, s in (event.get("stages") or {}).items()]
    if event.get("peak_memory_GiB") is not None:
        figures.append(("peak memory", f"{event['peak_memory_GiB']:.2f} GiB ({event.get('peak_memory_kind', '')})"))
    for key, label, unit in (("energy_per_clip_J", "energy per clip", "J"), ("mean_power_W", "mean power", "W"),
                             ("mean_sm_clock_MHz", "mean SM clock", "MHz"), ("mean_gpu_util_pct", "mean GPU utilisation", "%"),
                             ("peak_temperature_C", "peak temperature", "°C")):  # fmt: skip
        value = event.get(key, telemetry.get(key))
        if value is not None:
            figures.append((label, f"{value:.0f} {unit}"))
    if "throttle_reasons" in telemetry:
        held = ", ".join(f"{name} {100 * share:.0f} %" for name, share in telemetry["throttle_reasons"].items())
        figures.append(("clock throttle reasons (share of samples)", held or "none"))
    fidelity = _fidelity(event.get("fidelity") or {})
    return {
        **event,
        "figures": figures,
        "fidelity_shown": fidelity,
        "trace": _data_uri(charts.telemetry(trial_dir / "telemetry.csv")),
        "frames": _data_uri(charts.frame_sheet(trial_dir / "frames.npy")),
    }


def _comparison(run_dir: Path) -> dict | None:
    """The run against the previous best of its hardware, with each row's figures in words."""
    found = read_json(run_dir / COMPARISON_FILE)
    if not found or "error" in found:  # the journal says why it was not compared
        return None
    rows = [*found["rungs"], *([found["converged"]] if found.get("converged") else [])]
    return found | {"rows": rows, "bar": f"{100 * found['min_gain']:g} %"}


def render(run_dir: Path) -> str:
    run = load(run_dir.parent, run_dir.name)
    events = run.events
    first = {e["kind"]: e for e in reversed(events)}  # the first event of each kind
    decisions = [e for e in events if e["kind"] == "decision"]
    trials = [_trial(e, run_dir) for e in decisions]
    skipped = [{"name": f"(skipped) {e['rung']}", "rung": e["rung"], "verdict": "skipped", "reason": e["reason"]}
               for e in events if e["kind"] == "rung_skipped"]  # fmt: skip
    best_name = ((run.best or {}).get("measured") or {}).get("name")
    start = first.get("run_started", {})
    prompt = (start.get("workload") or {}).get("prompt", "")
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html", "j2"]))
    return env.get_template("report.html.j2").render(
        run=run,
        start=start,
        status=run.status(),
        weights=start.get("weights") or (run.record.get("model") or {}).get("weights", "?"),
        hardware=(first.get("probe") or {}).get("summary", ""),
        versions=(first.get("provision") or {}).get("versions", {}),
        misfits=(first.get("provision") or {}).get("fit_problems", []),
        ladder=_data_uri(charts.ladder(trials + skipped, best_name)) if trials or skipped else None,
        trials=trials,
        skipped=skipped,
        best=run.best,
        best_name=best_name,
        best_yaml=yaml.safe_dump(run.best, sort_keys=False) if run.best else None,
        comparison=_comparison(run_dir),
        reproduce=shlex.join(["wan-agent", "generate", "--run", run.id, "--prompt", prompt]),
    )


def write(run_dir: Path) -> Path:
    path = run_dir / REPORT_FILE
    write_text_atomic(path, render(run_dir))
    return path
