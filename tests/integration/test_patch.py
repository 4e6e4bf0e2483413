"""patch: the baseline's attention backend, checked against what this machine has, and recorded."""

import json

from langgraph.runtime import Runtime

from agent.nodes.patch import patch
from agent.state import RunContext


def run_patch(tmp_path, attention: str) -> tuple[dict, dict]:
    (tmp_path / "run").mkdir()
    state = {"run_id": "run", "playbook": {"name": "p", "baseline": {"attention": attention, "steps": 40}}}
    update = patch(state, Runtime(context=RunContext(runs_dir=tmp_path, cache_dir=tmp_path)))  # type: ignore[arg-type]
    events = [json.loads(line) for line in (tmp_path / "run" / "journal.jsonl").read_text().splitlines()]
    return update, next(e for e in events if e["kind"] == "patch")


def test_a_baseline_on_a_backend_this_machine_lacks_is_patched_to_sdpa(tmp_path):
    update, event = run_patch(tmp_path, "flash")  # flash_attn is not installed here
    assert update == {"attention": event["attention"]} and event["attention"]["backend"] == "native"
    assert event["attention"]["requested"] == "flash"
    assert "cannot run here" in event["attention"]["reason"] and "flash-attn" in event["attention"]["reason"]


def test_a_baseline_backend_that_is_present_is_kept_and_recorded(tmp_path):
    update, event = run_patch(tmp_path, "_native_math")
    assert update["attention"]["backend"] == "_native_math"
    assert "probes it on the trial's shape" in event["attention"]["reason"]
