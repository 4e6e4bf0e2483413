"""Failures met for real on this machine, and what the agent does about them: the playbook's remediation
rules are walked in order, each at most once; what no rule covers is recorded and skipped."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import psutil
import yaml

from agent import sources, trials
from agent.cli import UNRESOLVED_EXIT
from agent.runtime.config import Knobs, Measurement, TrialConfig, Workload
from tests.conftest import small_playbook, wan_agent, write_playbook


def test_missing_kernels_walk_the_rules_then_move_on(tmp_path):
    book = small_playbook(
        ladder=[
            # flash-attn is not installed here: the backend fails its probe.
            {"name": "flash", "hypothesis": "FlashAttention 2 kernels.", "set": {"attention": "flash"}},
            # FP8 compute needs CUDA >= 8.9; no rule below covers it.
            {"name": "fp8", "hypothesis": "FP8 compute.", "set": {"fp8": "torchao_row"}},
            # FlashAttention-3 and FP8 attention on it need a GPU: skipped at planning, no trial spent.
            {"name": "fa3", "hypothesis": "FA3.", "set": {"attention": "_flash_3"}},
            {"name": "fp8-attention", "hypothesis": "FA3 in FP8.", "set": {"attention": "_flash_3", "attention_fp8": True}},
        ],
        remediation=[
            {
                "name": "attention-backend",
                "match": ["attention backend '.*' skipped"],
                "changes": [{"attention": "_native_cudnn"}, {"attention": "_native_math"}],
            }
        ],
    )
    runs = tmp_path / "runs"
    done = wan_agent("run", "--playbook", str(write_playbook(tmp_path / "rules.yaml", book)), runs_dir=runs)
    assert done.returncode == 0, done.stderr
    run_dir = runs / done.stdout.strip()
    events = [json.loads(line) for line in (run_dir / "journal.jsonl").read_text().splitlines()]
    verdicts = {e["name"]: e["verdict"] for e in events if e["kind"] == "decision"}
    assert list(verdicts) == ["00-baseline", "01-flash", "02-flash-attention-backend-1", "03-flash-attention-backend-2"]
    assert verdicts["01-flash"] == verdicts["02-flash-attention-backend-1"] == "skipped"  # flash, then cuDNN: not here
    assert verdicts["03-flash-attention-backend-2"] in ("kept", "reverted")  # the math kernel runs
    # FP8 compute is known not to run on this hardware before any trial is spent on it.
    skipped = {e["rung"]: e["reason"] for e in events if e["kind"] == "rung_skipped"}
    assert "compute capability >= 8.9" in skipped["fp8"]
    assert "(FlashAttention-3) runs on CUDA GPUs only" in skipped["fa3"] and "CUDA GPUs only" in skipped["fp8-attention"]
    remedies = [(e["trial"], e["rule"], e["attempt"]) for e in events if e["kind"] == "remediation"]
    assert remedies == [("01-flash", "attention-backend", 1), ("02-flash-attention-backend-1", "attention-backend", 2)]
    reasons = {e["name"]: e["reason"] for e in events if e["kind"] == "decision"}
    assert "flash" in reasons["01-flash"]
    journal = (run_dir / "journal.md").read_text()
    assert "**Remediation.** Rule `attention-backend`, attempt 2 of 2" in journal
    assert "**Attention.** `_native_math`: probed on 1×" in journal and "relative error against SDPA" in journal
    assert yaml.safe_load((run_dir / "best.yaml").read_text())["knobs"]["fp8"] == "none"


def test_a_playbook_for_a_gpu_fails_fast_on_a_machine_without_one(tmp_path):
    book = small_playbook(device="cuda")
    runs = tmp_path / "runs"
    done = wan_agent("run", "--playbook", str(write_playbook(tmp_path / "gpu.yaml", book)), runs_dir=runs)
    assert done.returncode == 1
    journal = (runs / done.stdout.strip() / "journal.md").read_text()
    assert "Rung `baseline` skipped: the playbook asks for a CUDA GPU and this machine has none" in journal
    assert not list((runs / done.stdout.strip()).glob("trials/*"))  # no trial spent on it


def test_a_baseline_that_cannot_run_is_a_failed_run_with_its_reason(tmp_path):
    # cuDNN attention imports everywhere (patch keeps it) but runs on no CPU: the worker's probe fails it.
    book = small_playbook(baseline={"attention": "_native_cudnn"}, remediation=[])
    runs = tmp_path / "runs"
    done = wan_agent("run", "--playbook", str(write_playbook(tmp_path / "bad-baseline.yaml", book)), runs_dir=runs)
    assert done.returncode == 1
    run_dir = runs / done.stdout.strip()
    assert not (run_dir / "best.yaml").exists()
    journal = (run_dir / "journal.md").read_text()
    assert "_native_cudnn" in journal and "no usable baseline" in journal


def test_a_baseline_on_a_missing_backend_is_patched_and_its_run_is_reused_as_written(tmp_path):
    book = small_playbook(baseline={"attention": "flash"}, remediation=[])  # flash_attn is not installed here
    book["ladder"] = [r for r in book["ladder"] if r["name"] == "lightning"]
    path, runs = write_playbook(tmp_path / "flash-baseline.yaml", book), tmp_path / "runs"
    done = wan_agent("run", "--playbook", str(path), runs_dir=runs)
    assert done.returncode == 0, done.stderr
    run_id = done.stdout.strip()
    trial = json.loads((runs / run_id / "trials" / "00-baseline" / "trial.json").read_text())
    assert trial["knobs"]["attention"] == "native" and "patched to `native`" in (runs / run_id / "journal.md").read_text()
    again = wan_agent("run", "--playbook", str(path), "--reuse", runs_dir=runs)
    assert again.returncode == 0 and again.stdout.strip() == run_id, again.stderr


def converged_run(tmp_path: Path, book: dict) -> tuple[Path, list[dict]]:
    """Run ``book`` to the end; its run directory and journal events. Converged with a rung the host's noise left
    open (exit UNRESOLVED_EXIT) counts too: these tests are about remediation, not the speed of their tiny rungs."""
    runs = tmp_path / "runs"
    done = wan_agent("run", "--playbook", str(write_playbook(tmp_path / "book.yaml", book)), runs_dir=runs)
    assert done.returncode in (0, UNRESOLVED_EXIT), done.stderr
    run_dir = runs / done.stdout.strip()
    return run_dir, [json.loads(line) for line in (run_dir / "journal.jsonl").read_text().splitlines()]


def uncapped_vm_peak_GiB(tmp_path: Path, model_path: str, height: int, width: int) -> float:
    """The worker's peak address space for one clip of the OOM test's baseline at this size, with no cap."""
    out = tmp_path / f"vm-{height}x{width}"
    config = TrialConfig(
        name=out.name,
        model_path=model_path,
        output_dir=str(out),
        workload=Workload(prompt="A cat walking on the grass", height=height, width=width, frames=17, seed=1),
        knobs=Knobs(**OOM_BASELINE),
        measurement=Measurement(warmup=0, repeats=1),
    )
    trials.prepare(out, config)
    subprocess.run([sys.executable, "-m", "agent.runtime.worker", str(out / "trial.json")], check=True, capture_output=True)
    return json.loads((out / "result.json").read_text())["memory"]["peak_vm_GiB"]


OOM_BASELINE = {"precision": "bf16", "steps": 2, "guidance_scale": 1.0, "guidance_scale_2": 1.0}


def test_out_of_memory_walks_the_memory_savers_then_falls_back_to_a_smaller_workload(tmp_path):
    model = sources.resolve("synthetic:tiny", Path(os.environ["WAN_AGENT_CACHE"]))
    big, small = (uncapped_vm_peak_GiB(tmp_path, model.path, h, w) for h, w in ((480, 832), (48, 64)))
    assert big - small > 0.2, f"the test needs clearly different peaks: {big:.2f} vs {small:.2f} GiB"
    cap = (big + small) / 2  # a real RLIMIT_AS: the 480×832 clip cannot allocate under it, 48×64 can
    book = small_playbook(
        workload={"height": 480, "width": 832, "frames": 17},
        baseline=OOM_BASELINE,
        measurement={"warmup": 0, "repeats": 3},
        limits={"host_memory_GiB": cap},
        ladder=[{"name": "fp8", "hypothesis": "FP8 weight storage.", "set": {"fp8": "layerwise"}}],
        remediation=[
            {
                "name": "oom",
                "match": ["can't allocate memory", "MemoryError", "Unable to allocate"],
                # UMT5 on the CPU saves nothing on a CPU: the rule goes on to its last resort.
                "changes": [{"text_encoder_on_cpu": True}, {"workload": {"height": 48, "width": 64}}],
            }
        ],
    )
    run_dir, events = converged_run(tmp_path, book)
    decisions = {e["name"]: e for e in events if e["kind"] == "decision"}
    assert list(decisions) == ["00-baseline", "01-baseline-oom-1", "02-baseline-oom-2", "03-fp8"]
    for name in ("00-baseline", "01-baseline-oom-1"):
        assert decisions[name]["verdict"] == "failed"
        assert re.search("can't allocate memory|MemoryError|Unable to allocate", decisions[name]["reason"])
    fallback = decisions["02-baseline-oom-2"]
    assert fallback["verdict"] == "baseline" and "CHANGED WORKLOAD: 64×48, 17 frames" in fallback["reason"]
    assert decisions["03-fp8"]["workload"]["height"] == 48  # later rungs run at the baseline's workload
    best = yaml.safe_load((run_dir / "best.yaml").read_text())
    assert (best["workload"]["height"], best["workload"]["width"]) == (48, 64)
    assert best["workload_changed_from"]["height"] == 480
    assert "**Changed workload**: 64×48, 17 frames instead of 832×480, 17 frames" in (run_dir / "journal.md").read_text()


def test_a_trial_past_its_deadline_is_killed_recorded_and_the_run_goes_on(tmp_path):
    book = small_playbook(
        timeouts={"deadline_s": 45, "idle_timeout_s": 30},
        workload={"height": 96, "width": 160, "frames": 17},
        ladder=[
            # 4 clips of 1000 CFG steps cannot finish in 45 s at this size: a hang, as far as the agent can tell.
            {"name": "slow", "hypothesis": "Far more steps.", "set": {"steps": 1000}},
            {"name": "lightning", "hypothesis": "4 steps.", "set": {"lightning": True, "steps": 4}, "gate": "reference_free"},
        ],
    )
    run_dir, events = converged_run(tmp_path, book)
    decisions = {e["name"]: e for e in events if e["kind"] == "decision"}
    assert list(decisions) == ["00-baseline", "01-slow", "02-lightning"]
    slow = decisions["01-slow"]
    assert slow["verdict"] == "failed" and "timed out after" in slow["reason"] and "reruns" not in slow
    assert not [p for p in psutil.process_iter(["cmdline"]) if "01-slow" in " ".join(p.info["cmdline"] or [])]
    assert "Last lines of its log" in (run_dir / "journal.md").read_text()
    best = yaml.safe_load((run_dir / "best.yaml").read_text())
    assert best["measured"]["name"] == "02-lightning" and best["knobs"]["steps"] == 4
