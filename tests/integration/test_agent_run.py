"""The whole graph on the tiny model: trials in real tmux sessions, real SQLite checkpoints."""

import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from agent import tmux, trial_host
from agent.quality import relative_error
from tests.conftest import ROOT, TOKEN, small_playbook, wan_agent, write_playbook

EVIL = 'It\'s a "cat"; $(touch {canary}) `touch {canary}` | rm -rf ~ & echo $HOME\nsecond line\ttab'


def events(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "journal.jsonl").read_text().splitlines()]


def test_run_prints_its_id_and_converges_on_lightning(converged):
    _, runs, run_id = converged
    run_dir = runs / run_id
    best = yaml.safe_load((run_dir / "best.yaml").read_text())
    assert best["run_id"] == run_id and best["playbook"] == "tiny-test"
    assert best["model"]["weights"] == "real" and best["model"]["spec"] == "t2v-a14b"
    assert best["knobs"]["lightning"] is True and best["knobs"]["steps"] == 4
    decisions = {e["name"]: e["verdict"] for e in events(run_dir) if e["kind"] == "decision"}
    assert decisions["00-baseline"] == "baseline"
    assert decisions["01-fp8"] in ("kept", "reverted")
    assert decisions["02-lightning"] == "kept"
    assert best["knobs"]["fp8"] == ("layerwise" if decisions["01-fp8"] == "kept" else "none")


def test_lightning_is_kept_on_a_machine_loaded_by_cpu_burners(tmp_path):
    # The CI failure behind issue 11: a loaded 2-core host made the agent revert a rung doing 20x less work.
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 2)]
    try:
        book = small_playbook()
        book["ladder"] = [r for r in book["ladder"] if r["name"] == "lightning"]
        done = wan_agent("run", "--playbook", str(write_playbook(tmp_path / "b.yaml", book)), runs_dir=tmp_path / "runs")
    finally:
        for burner in burners:
            burner.kill()
    assert done.returncode == 0, done.stderr
    decisions = {e["name"]: e for e in events(tmp_path / "runs" / done.stdout.strip()) if e["kind"] == "decision"}
    assert decisions["01-lightning"]["verdict"] == "kept", decisions["01-lightning"]["reason"]


def test_repeats_after_the_baseline_come_from_its_spread(converged):
    _, runs, run_id = converged
    planned = {e["trial"]: e for e in events(runs / run_id) if e["kind"] == "trial_planned"}
    assert planned["00-baseline"]["measurement"]["repeats"] == 3  # the playbook's
    for name in ("01-fp8", "02-lightning"):
        repeats = planned[name]["measurement"]["repeats"]
        assert 3 <= repeats <= 10 and "baseline noise" in planned[name]["measurement_why"]
        log = (runs / run_id / "trials" / name / "stdout.log").read_text()
        assert f"repeat {repeats}/{repeats} took" in log
    assert "Timing: full mode, repeats" in (runs / run_id / "journal.md").read_text()


def test_a_probe_mode_search_is_confirmed_by_one_full_clip(tmp_path):
    # Its trials share a process: the run's trial host (agent/trial_host.py) runs them one after another.
    measurement = {"mode": "probe", "warmup": 1, "repeats": 3, "probe_steps": 3, "share_process": True}
    book = small_playbook(measurement=measurement)
    # Declared same-function but is not (the distilled LoRA changes what the experts compute): rejected by its gate.
    at, lightning = next((i, r) for i, r in enumerate(book["ladder"]) if r["name"] == "lightning")
    book["ladder"].insert(
        at, {"name": "mislabelled", "hypothesis": "Same function?", "set": lightning["set"], "gate": "fidelity"}
    )
    # A same-function rung after Lightning is checked against the Lightning trial, not the baseline's other function.
    book["ladder"].append({"name": "vae-tiling", "hypothesis": "Tiles the decode.", "set": {"vae_tiling": True}})
    done = wan_agent("run", "--playbook", str(write_playbook(tmp_path / "tiny-probe.yaml", book)), runs_dir=tmp_path / "runs")
    assert done.returncode in (0, 3), done.stderr
    run_dir = tmp_path / "runs" / done.stdout.strip()
    decisions = {e["name"]: e for e in events(run_dir) if e["kind"] == "decision"}
    # Tiling changes nothing at this size: its timing is noise, which the rule may call inconclusive (exit 3).
    unresolved = {n for n, d in decisions.items() if d["verdict"] in ("inconclusive", "unconfirmed")}
    assert unresolved <= {"04-vae-tiling"} and (done.returncode == 3) == bool(unresolved), done.stderr
    if unresolved:
        assert "**Unresolved.** 04-vae-tiling inconclusive" in (run_dir / "journal.md").read_text()
    assert list(decisions) == ["00-baseline", "01-fp8", "02-mislabelled", "03-lightning", "04-vae-tiling", "05-confirm"]
    assert all(decisions[n]["predicted"] for n in ("00-baseline", "01-fp8", "03-lightning", "04-vae-tiling"))
    # Rungs that change only the experts' compute take the decodes the baseline timed; the VAE's rung times its own.
    probed = [n for n in decisions if n != "05-confirm"]
    probes = {n: json.loads((run_dir / "trials" / n / "result.json").read_text())["probe"] for n in probed}
    baseline_decodes = probes["00-baseline"]["vae_decode_samples_s"]
    for name in ("01-fp8", "02-mislabelled", "03-lightning"):
        assert probes[name]["vae_decode_from"] == "00-baseline" and "vae_first_decode_s" not in probes[name]
        assert set(probes[name]["vae_decode_samples_s"]) == {statistics.median(baseline_decodes)}
        assert decisions[name]["vae_decode_from"] == "00-baseline"
    tiled = probes["04-vae-tiling"]  # its own decodes, as many as its clips (repeats sized by the baseline's noise)
    assert "vae_decode_from" not in tiled and len(tiled["vae_decode_samples_s"]) == len(tiled["clip_samples_s"]) >= 3
    assert "(00-baseline's: the same decoder, not timed again)" in (run_dir / "journal.md").read_text()
    mislabelled = decisions["02-mislabelled"]
    assert mislabelled["verdict"] == "rejected" and "computes a different function" in mislabelled["reason"]
    tiling = decisions["04-vae-tiling"]["fidelity"]
    # The VAE's rung runs the best's experts unchanged: it takes their timed steps and judges its decoded frame alone.
    assert probes["04-vae-tiling"]["steps_from"] == "03-lightning" and decisions["04-vae-tiling"]["steps_from"] == "03-lightning"
    for expert, samples in probes["03-lightning"]["step_samples_s"].items():
        assert set(probes["04-vae-tiling"]["step_samples_s"][expert]) == {statistics.median(samples)}
    # Its experts' check outputs are the best's: here the reference itself, so they match it exactly.
    assert tiling["reference"] == "03-lightning" and set(tiling["relative_error"].values()) == {0.0}
    assert {p.split("@")[0] for p in tiling["relative_error"]} == {"transformer", "transformer_2"}
    assert "(03-lightning's: the same experts, not timed again)" in (run_dir / "journal.md").read_text()
    assert "no expert forwards (their figures are the best's)" in (run_dir / "journal.md").read_text()
    assert (
        "steps_from" not in probes["03-lightning"]
        and "probe transformer step" not in (run_dir / "trials" / "04-vae-tiling" / "stdout.log").read_text()
    )
    assert decisions["04-vae-tiling"]["fidelity_gate"]["bounds"]["vae_frame_psnr_dB"] <= 45  # judged on its frame
    assert tiling["vae_frame"]["comparable"] and tiling["vae_frame"]["psnr_dB"] > 20
    checks = {n: np.load(run_dir / "trials" / n / "check_output.npz") for n in ("00-baseline", "03-lightning")}
    assert relative_error(checks["03-lightning"]["transformer@999"], checks["00-baseline"]["transformer@999"]) > 1e-2
    journal_text = (run_dir / "journal.md").read_text()
    assert "Against 03-lightning: transformer output relative error (03-lightning's experts, worst of" in journal_text
    assert "the decoded check frame PSNR" in journal_text and "Gate: same function within" in journal_text
    confirm = decisions["05-confirm"]
    assert (
        confirm["verdict"] == "confirmed" and not confirm["predicted"] and "predicted from probe-mode steps" in confirm["reason"]
    )
    assert (run_dir / "trials" / "05-confirm" / "video.mp4").is_file()
    best = yaml.safe_load((run_dir / "best.yaml").read_text())
    winner = "04-vae-tiling" if decisions["04-vae-tiling"]["verdict"] == "kept" else "03-lightning"
    assert best["measured"]["name"] == winner  # the confirmation only times the winner whole
    assert best["measured"]["confirmation"]["clip_s"] == confirm["generate_s"]
    assert "confirms the winner" in (run_dir / "journal.md").read_text()
    hosted = [json.loads((run_dir / "trials" / n / "result.json").read_text())["setup"]["host"] for n in decisions]
    assert [h["trials_before"] for h in hosted] == list(range(len(decisions))) and len({h["pid"] for h in hosted}) == 1
    assert "in the run's trial host (pid" in journal_text and "its first trial" in journal_text
    assert not tmux.is_running(trial_host.session(run_dir.name))  # stopped with the run: the GPU given back


def test_each_trial_dir_holds_its_artifacts(converged):
    _, runs, run_id = converged
    for trial in ("00-baseline", "01-fp8", "02-lightning"):
        d = runs / run_id / "trials" / trial
        for name in ("trial.json", "stdout.log", "result.json", "telemetry.csv", "telemetry.json", "video.mp4", "exit_code"):
            assert (d / name).is_file(), d / name
        assert "done:" in (d / "stdout.log").read_text()
        assert not tmux.is_running(tmux.session_name(run_id, trial))


def test_run_json_and_journal_md_tell_the_story(converged):
    _, runs, run_id = converged
    run = json.loads((runs / run_id / "run.json").read_text())
    assert run["hardware"]["fingerprint"] and run["versions"]["torch"] and run["playbook"]["name"] == "tiny-test"
    assert run["model"]["weights"] == "real" and run["model"]["downloads"][0]["hub"] == "huggingface"
    assert run["lock"]["path"].endswith("constraints.txt") and len(run["lock"]["sha256"]) == 64
    assert run["fit_problems"] == []  # a CPU machine: nothing to fit
    freeze = (runs / run_id / run["freeze"]).read_text().splitlines()
    assert f"torch=={run['versions']['torch']}" in freeze and any(line.startswith("langgraph==") for line in freeze)
    text = (runs / run_id / "journal.md").read_text()
    for needle in (
        "### 00-baseline",
        "### 01-fp8",
        "### 02-lightning",
        "**Why.**",
        "**Decision: kept.**",
        "first forwards (compile, quantize, autotune) ",
        "| configuration | steps | frames | time | speed-up vs baseline | peak memory | energy | kept? |",
        "Converged on **02-lightning** after 3 trials",
        "Real Wan2.2 weights (`t2v-a14b`)",
        "`Wan-AI/Wan2.2-T2V-A14B-Diffusers` @ `5be7df9619b5` from huggingface",
        "sizes and checksums verified",
        "**Search cost.** ",
        "min in trials, of which ",
    ):
        assert needle in text
    events = [json.loads(line) for line in (runs / run_id / "journal.jsonl").read_text().splitlines()]
    end = next(e for e in events if e["kind"] == "converged")
    cost = end["cost"]
    assert 0 < cost["setup_s"] < cost["trials_s"] and cost["costliest_setup"]["trial"].startswith("0")
    assert cost["trials_s"] < cost["total_s"] + 3  # tmux gives each of the 3 sessions' start to the second
    assert abs(cost["setup_s"] + cost["measuring_s"] - cost["trials_s"]) < 1e-6
    if run["hardware"]["nvml"] != "ok":
        assert "not measured (no NVML)" in text


def test_checkpoints_are_in_sqlite(converged):
    _, runs, run_id = converged
    with sqlite3.connect(runs / run_id / "checkpoint.sqlite") as db:
        (count,) = db.execute("select count(*) from checkpoints where thread_id = ?", (run_id,)).fetchone()
    assert count > 10


def test_resume_of_a_finished_run_does_nothing(converged):
    _, runs, run_id = converged
    before = (runs / run_id / "journal.jsonl").read_text()
    done = wan_agent("resume", run_id, runs_dir=runs)
    assert done.returncode == 0, done.stderr
    assert (runs / run_id / "journal.jsonl").read_text() == before


def test_reuse_returns_the_converged_run_without_searching(converged):
    base, runs, run_id = converged
    done = wan_agent("run", "--playbook", str(base / "tiny-test.yaml"), "--reuse", runs_dir=runs)
    assert done.returncode == 0 and done.stdout.strip() == run_id
    assert "reusing converged run" in done.stderr


def test_no_token_reaches_a_trial_its_log_or_the_journal(converged):
    _, runs, run_id = converged
    for path in (runs / run_id).rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path
    for result in (runs / run_id / "trials").glob("*/result.json"):
        seen = json.loads(result.read_text())["environment"]
        assert "PATH" in seen and not {"HF_TOKEN", "MODELSCOPE_API_TOKEN"} & set(seen)


def test_reuse_says_why_a_run_is_passed_over_and_skips_a_broken_best_yaml(converged):
    base, runs, run_id = converged
    upgraded, noisy, broken = (runs / f"{run_id}-{suffix}" for suffix in ("upgraded", "x-noisy", "zz-broken"))
    for copy, change in ((upgraded, {"torch": "0.1"}), (noisy, {})):
        shutil.copytree(runs / run_id, copy)
        best = yaml.safe_load((copy / "best.yaml").read_text())
        best["reuse_key"]["versions"] |= change
        best["unresolved"] = [] if change else ["01-fp8"]
        (copy / "best.yaml").write_text(yaml.safe_dump(best))
    broken.mkdir()
    (broken / "best.yaml").write_text("")
    try:
        done = wan_agent("run", "--playbook", str(base / "tiny-test.yaml"), "--reuse", runs_dir=runs)
    finally:
        for made in (upgraded, noisy, broken):
            shutil.rmtree(made)
    assert done.returncode == 0 and done.stdout.strip() == run_id, done.stderr
    assert f"not reusing run {upgraded.name}: torch 0.1 -> " in done.stderr
    assert f"not reusing run {noisy.name}: the host's noise left 01-fp8 unresolved" in done.stderr
    assert "best.yaml: not a converged configuration" in done.stderr


def test_run_ids_are_names_not_paths(converged):
    _, runs, _ = converged
    for args in (["journal", "../.."], ["resume", "../x"], ["generate", "--run", "../../etc", "--prompt", "x"], ["stop", "a/b"]):
        done = wan_agent(*args, runs_dir=runs)
        assert done.returncode == 2 and "is not a run id" in done.stderr, (args, done.stderr)


def test_a_hostile_prompt_reaches_the_model_verbatim_and_runs_nothing(converged, tmp_path):
    _, runs, run_id = converged
    canary = tmp_path / "executed"
    evil = EVIL.format(canary=canary)
    done = wan_agent("generate", "--run", run_id, "--prompt", evil, runs_dir=runs)
    assert done.returncode == 0, done.stderr
    video = Path(done.stdout.strip())
    assert video.is_file()
    result = json.loads((video.parent / "result.json").read_text())
    assert result["prompt"] == evil
    assert result["config"]["knobs"]["lightning"] is True
    assert not canary.exists()


def test_generate_refuses_a_best_this_machine_cannot_run(converged, tmp_path):
    _, runs, run_id = converged
    copy = tmp_path / "runs"
    shutil.copytree(runs / run_id, copy / run_id, ignore=shutil.ignore_patterns("trials", "generations"))
    best = yaml.safe_load((copy / run_id / "best.yaml").read_text())
    best["knobs"] |= {"ulysses": 2, "attention": "_flash_3"}  # measured on a multi-GPU Hopper server, say
    (copy / run_id / "best.yaml").write_text(yaml.safe_dump(best))
    done = wan_agent("generate", "--run", run_id, "--prompt", "a cat", runs_dir=copy)
    assert done.returncode == 2 and "best cannot run on this machine: attention=_flash_3" in done.stderr, done.stderr
    assert not (copy / run_id / "generations").exists() or not any((copy / run_id / "generations").iterdir())


def test_generate_without_a_converged_run_is_a_clear_error(tmp_path):
    done = wan_agent("generate", "--prompt", "a cat", runs_dir=tmp_path)
    assert done.returncode == 2 and "no converged run" in done.stderr


@pytest.mark.skipif(
    not (ROOT / ".venv" / "bin" / "wan-agent").exists(), reason="start_wan.sh drives .venv, made by the README's test command"
)
def test_start_wan_generates_then_reuses_the_converged_run(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "WAN_AGENT_RUNS"}

    def start_wan(prompt: str, *flags: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(ROOT / "start_wan.sh"), *flags, "--runs-dir", str(tmp_path), prompt],
            capture_output=True,
            text=True,
            timeout=900,
            cwd=tmp_path,
            env=env,
        )

    first = start_wan("A cat walking on the grass", "--synthetic")  # what the CPU default is anyway
    assert first.returncode == 0, first.stderr
    video = Path(first.stdout.split("video:")[1].split()[0])
    assert video.is_file() and "journal:" in first.stdout
    journal = Path(first.stdout.split("journal:")[1].split()[0])
    head = (journal if journal.is_absolute() else tmp_path / journal).read_text().splitlines()[:4]
    assert any("**Synthetic weights** (`synthetic:tiny`)" in line and "noise by design" in line for line in head)
    second = start_wan("A dog")
    assert second.returncode == 0, second.stderr
    assert "reusing converged run" in second.stderr
    assert len(list(tmp_path.glob("*/best.yaml"))) == 1
    assert len(list(tmp_path.glob("*/generations/*/video.mp4"))) == 2


def test_start_wan_refuses_bad_arguments(tmp_path):
    for args, message in (([], "usage:"), (["--bogus", "x"], "unknown option --bogus"), (["a", "b"], "one prompt")):
        done = subprocess.run([str(ROOT / "start_wan.sh"), *args], capture_output=True, text=True, cwd=tmp_path)
        assert done.returncode == 2 and message in done.stderr
