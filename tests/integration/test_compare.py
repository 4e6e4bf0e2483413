"""`wan-agent runs` and `wan-agent compare` on a real converged tiny run and on copies of it made slower, of another
clip, or cut short: the verdicts, the exit codes (0 / 1 regression / 2 not comparable) and what differs."""

import json
import shutil

import pytest

from tests.conftest import rewrite_events, wan_agent


@pytest.fixture
def twin(converged, tmp_path):
    """The converged run and a copy of it under a later id, in a runs folder of their own."""
    _, runs, run_id = converged
    mine = tmp_path / "runs"
    shutil.copytree(runs / run_id, mine / run_id, ignore=shutil.ignore_patterns("*.mp4", "*.npy", "*.npz", "inductor-cache"))
    later = "99991231-000000-tiny-test-copy"
    shutil.copytree(mine / run_id, mine / later)
    return mine, run_id, later


def test_a_run_against_its_copy_has_no_regression(twin):
    runs, a, b = twin
    done = wan_agent("compare", a, b, runs_dir=runs)
    assert done.returncode == 0, done.stderr
    assert "| lightning |" in done.stdout and "| converged clip |" in done.stdout and "**slower**" not in done.stdout
    report = json.loads(wan_agent("compare", a, b, "--json", runs_dir=runs).stdout)
    assert {row["verdict"] for row in report["rungs"]} == {"same"} and report["regressions"] == []
    assert report["differences"] == [] and report["converged"]["ratio"] == 1.0
    # 'best' as A: the previous converged run of B's hardware, which is the original.
    assert json.loads(wan_agent("compare", "best", b, "--json", runs_dir=runs).stdout)["a"] == a


def test_a_slower_copy_is_a_regression_named(twin):
    runs, a, b = twin

    def slower(e):
        if e["kind"] == "decision" and e["rung"] == "lightning":
            e["samples_s"] = [1.3 * s for s in e["samples_s"]]
            e["generate_s"] *= 1.3
        if e["kind"] == "provision":
            e["versions"]["torch"] = "9.9.9"
        return e

    rewrite_events(runs / b, slower)
    record = json.loads((runs / b / "run.json").read_text())
    record["versions"]["torch"] = "9.9.9"
    (runs / b / "run.json").write_text(json.dumps(record))
    done = wan_agent("compare", a, b, runs_dir=runs)
    assert done.returncode == 1, done.stderr
    assert "| lightning |" in done.stdout and "**slower**" in done.stdout
    assert "**Regression** beyond noise and the 2 % bar: lightning, converged clip" in done.stdout
    assert "torch: " in done.stdout and "-> 9.9.9 (sets the speed)" in done.stdout
    # The other way round, B is faster: no regression.
    assert wan_agent("compare", b, a, runs_dir=runs).returncode == 0


def test_runs_of_different_clips_or_unknown_ids_cannot_be_compared(twin):
    runs, a, b = twin
    record = json.loads((runs / b / "run.json").read_text())
    record["playbook"]["workload"]["frames"] += 4
    (runs / b / "run.json").write_text(json.dumps(record))
    done = wan_agent("compare", a, b, runs_dir=runs)
    assert done.returncode == 2 and "measure different clips" in done.stderr and "not comparable" in done.stderr
    for bad in ("nope", "../x"):
        done = wan_agent("compare", a, bad, runs_dir=runs)
        assert done.returncode == 2 and ("no run 'nope'" in done.stderr or "is not a run id" in done.stderr), done.stderr


def test_runs_lists_them_newest_first_with_their_status(twin):
    runs, a, b = twin
    rewrite_events(runs / b, lambda e: None if e["kind"] == "converged" else e)  # cut before it converged
    (runs / b / "best.yaml").unlink()
    rows = json.loads(wan_agent("runs", "--json", runs_dir=runs).stdout)
    assert [r["id"] for r in rows] == [b, a]
    assert rows[0]["status"] == "stopped before converging" and rows[0]["best_s"] is None
    assert rows[1]["status"] == "converged" and rows[1]["speedup"] > 1 and rows[1]["source"] == "t2v-a14b (real)"
    table = wan_agent("runs", runs_dir=runs).stdout.splitlines()
    assert table[0].split() == ["run", "started", "hardware", "model", "playbook", "status", "best", "speed-up"]
    assert table[1].startswith(b) and table[2].startswith(a) and "converged" in table[2]
