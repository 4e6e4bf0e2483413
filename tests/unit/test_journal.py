import json

from agent.journal import Journal


def test_a_key_is_recorded_once(tmp_path):
    journal = Journal(tmp_path)
    assert journal.record("decision", key="decision:00-baseline", verdict="baseline")
    assert not journal.record("decision", key="decision:00-baseline", verdict="baseline")
    assert journal.record("note", text="unkeyed events always append")
    assert [e["kind"] for e in journal.events()] == ["decision", "note"]


def test_a_torn_last_line_is_cut_on_open(tmp_path):
    journal = Journal(tmp_path)
    journal.record("probe", key="probe")
    with open(journal.path, "a") as f:
        f.write('{"kind": "decision", "key": "decision:00-ba')  # the agent died mid-write
    reopened = Journal(tmp_path)
    assert [e["key"] for e in reopened.events()] == ["probe"]
    reopened.record("decision", key="decision:00-baseline")
    lines = reopened.path.read_text().splitlines()
    assert [json.loads(line)["key"] for line in lines] == ["probe", "decision:00-baseline"]


def test_tokens_never_reach_the_journal(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secretvalue123")
    journal = Journal(tmp_path)
    journal.record("note", key="note", url="https://x/?token=hf_secretvalue123")
    journal.render()
    assert "hf_secretvalue123" not in journal.path.read_text()
    assert "<HF_TOKEN>" in journal.path.read_text()
    assert "hf_secretvalue123" not in (tmp_path / "journal.md").read_text()


def test_render_of_a_fresh_run_has_the_summary_table(tmp_path):
    journal = Journal(tmp_path)
    journal.record(
        "run_started",
        key="start",
        run_id="r1",
        playbook="tiny",
        workload={"prompt": "a cat; $(rm -rf /)", "height": 96, "width": 160, "frames": 17, "seed": 1},
    )
    text = journal.render()
    assert "# wan-agent run r1" in text
    assert "a cat; $(rm -rf /)" in text
    assert "| configuration | steps | frames | time | speed-up vs baseline | peak memory | energy | kept? |" in text


def test_the_set_up_says_whether_the_environment_fits_the_gpus(tmp_path):
    gpu = {"name": "NVIDIA H100 80GB HBM3", "memory_GiB": 79.6, "compute_capability": "9.0"}
    for problems, expected in (([], "- Fits the hardware: torch's CUDA build runs on this driver"),
                               (["torch has no kernels for X"], "- **Does not fit:** torch has no kernels for X")):  # fmt: skip
        (tmp_path / str(len(problems))).mkdir()
        journal = Journal(tmp_path / str(len(problems)))
        journal.record("run_started", key="start", run_id="r1", playbook="a14b", workload={"prompt": "p"})
        journal.record("probe", key="probe", hardware={"gpus": [gpu]}, summary="GPU: H100")
        journal.record("provision", key="provision", versions={"torch": "2.11.0"}, fit_problems=problems, runtimes={})
        text = journal.render()
        assert expected in text and ("Fits the hardware" in text) == (not problems)


def test_a_reader_leaves_out_a_line_still_being_written_and_writes_nothing(tmp_path):
    from agent.journal import read_events

    path = tmp_path / "journal.jsonl"
    path.write_text('{"kind": "probe"}\n{"kind": "decision", "na')  # the agent is mid-append
    assert read_events(path) == [{"kind": "probe"}]
    assert path.read_text().endswith('"na')  # a reader never cuts what the writer is writing
    assert read_events(tmp_path / "absent.jsonl") == []


def test_the_journal_says_how_static_fp8_scales_were_found():
    """Rendered from the journal of an H100 run (benchmarks/results/h100-2026-11-27b/agent-run-static), whose static
    FP8 trial recorded its calibration; the other trials' dynamic scales say nothing of it."""
    from pathlib import Path

    from agent.narrative import render_markdown

    recorded = Path(__file__).parents[2] / "benchmarks/results/h100-2026-11-27b/agent-run-static/journal.jsonl"
    events = [json.loads(line) for line in recorded.read_text().splitlines()]
    text = render_markdown(events)
    assert text.count("**FP8 scales.**") == 1
    assert "800 linear layers observed over one calibration denoising of 4 steps (seed 43" in text
    for event in events:  # as a confirmation that loaded that trial's ranges records it
        if (done := (event.get("setup") or {}).get("fp8_calibration")) is not None:
            done["from"] = "05-static-fp8"
    text = render_markdown(events)
    assert "800 linear layers with the ranges 05-static-fp8 observed over one calibration denoising of 4 steps (seed 43" in text
