"""Failures met for real on this machine, and what the agent does about them: the playbook's remediation
rules are walked in order, each at most once; what no rule covers is recorded and skipped."""

import json

import yaml

from tests.conftest import small_playbook, wan_agent, write_playbook


def test_missing_kernels_walk_the_rules_then_move_on(tmp_path):
    book = small_playbook(
        ladder=[
            # flash-attn is not installed here: the backend fails its probe.
            {"name": "flash", "hypothesis": "FlashAttention 2 kernels.", "set": {"attention": "flash"}},
            # FP8 compute needs CUDA >= 8.9; no rule below covers it.
            {"name": "fp8", "hypothesis": "FP8 compute.", "set": {"fp8": "torchao_row"}},
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
    remedies = [(e["trial"], e["rule"], e["attempt"]) for e in events if e["kind"] == "remediation"]
    assert remedies == [("01-flash", "attention-backend", 1), ("02-flash-attention-backend-1", "attention-backend", 2)]
    reasons = {e["name"]: e["reason"] for e in events if e["kind"] == "decision"}
    assert "flash" in reasons["01-flash"]
    journal = (run_dir / "journal.md").read_text()
    assert "**Remediation.** Rule `attention-backend`, attempt 2 of 2" in journal
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
    book = small_playbook(baseline={"attention": "flash"}, remediation=[])
    runs = tmp_path / "runs"
    done = wan_agent("run", "--playbook", str(write_playbook(tmp_path / "bad-baseline.yaml", book)), runs_dir=runs)
    assert done.returncode == 1
    run_dir = runs / done.stdout.strip()
    assert not (run_dir / "best.yaml").exists()
    journal = (run_dir / "journal.md").read_text()
    assert "flash" in journal and "no usable baseline" in journal
