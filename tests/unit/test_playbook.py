import copy

import pytest
import yaml

from agent import playbook
from tests.conftest import ROOT, wan_agent, write_playbook

TINY = yaml.safe_load((ROOT / "playbooks" / "tiny.yaml").read_text())


def broken(path: list, value) -> dict:
    book = copy.deepcopy(TINY)
    target = book
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return book


def test_shipped_playbook_is_valid():
    book = playbook.load("tiny")
    assert book.model.source == "synthetic:tiny"
    assert [r.name for r in book.ladder] == ["official-runtime", "fp8", "lightning"]


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (["baseline", "steps"], "many", "baseline.steps: Input should be a valid integer"),
        (["workload", "height"], 100, "workload.height: must be a multiple of 16 (got 100; try 96 or 112)"),
        (["workload", "frames"], 80, "workload.frames: must be 4n+1 (got 80; try 77 or 81)"),
        (["workload", "colour"], "red", "workload.colour: unknown key; allowed here: prompt, negative_prompt, height"),
        (
            ["ladder"],
            [{"name": "x", "hypothesis": "h", "set": {"stepz": 4}}],
            "ladder.0.set: unknown knob stepz; allowed: runtime, precision",
        ),
        (["ladder"], [{"name": "x", "hypothesis": "h", "set": {"fp8": "nvfp4"}}], "ladder.0.set: fp8: Input should be 'none'"),
        (["model", "source"], "ftp:foo", "model.source: 'ftp:foo' is not a known source; use a variant (t2v-a14b, "),
        (["baseline", "precision"], "int4", "baseline.precision: Input should be 'fp32', 'bf16' or 'fp16' (got 'int4')"),
        (["busy_gpu"], {"then": "share"}, "busy_gpu.then: Input should be 'refuse' or 'flag' (got 'share')"),
        (["measurement"], {"fewest": 5, "most": 3}, "measurement: fewest (5) must not exceed most (3)"),
        (["measurement"], {"repeats": 2}, "measurement.repeats: 2 is too few; a median of fewer than 3 repeats is their mean"),
    ],
)
def test_malformed_playbook_message_names_field_and_what_is_allowed(path, value, message):
    with pytest.raises(playbook.PlaybookError) as err:
        playbook.validate(broken(path, value), "x.yaml")
    assert message in str(err.value)


def test_duplicate_rung_names_are_refused():
    book = broken(["ladder"], TINY["ladder"] + TINY["ladder"][:1])
    with pytest.raises(playbook.PlaybookError, match="ladder.3.name: 'official-runtime' is used twice"):
        playbook.validate(book)


def test_invalid_yaml_and_missing_playbook(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(playbook.PlaybookError, match="not valid YAML"):
        playbook.load(str(bad))
    with pytest.raises(playbook.PlaybookError, match="not found.*known: .*tiny"):
        playbook.load("no-such-playbook")


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (["workload", "height"], 100, "workload.height: must be a multiple of 16"),
        (["measurement", "repeats"], "three", "measurement.repeats: Input should be a valid integer"),
        (["timeouts", "deadline"], 5, "timeouts.deadline: unknown key; allowed here: deadline_s, idle_timeout_s"),
    ],
)
def test_cli_exits_2_on_a_malformed_playbook_and_creates_no_run(tmp_path, path, value, message):
    bad = write_playbook(tmp_path / "bad.yaml", broken(path, value))
    runs = tmp_path / "runs"
    done = wan_agent("run", "--playbook", str(bad), runs_dir=runs, timeout=120)
    assert done.returncode == 2
    assert message in done.stderr
    assert done.stdout == ""
    assert not runs.exists()


def test_cli_exits_2_on_an_empty_prompt(tmp_path):
    done = wan_agent("run", "--playbook", "tiny", "--prompt", "", runs_dir=tmp_path, timeout=120)
    assert done.returncode == 2
    assert "prompt" in done.stderr


@pytest.mark.parametrize("path", [ROOT / "playbooks" / f"{name}.yaml" for name in playbook.names()], ids=lambda p: p.name)
def test_every_shipped_playbook_is_valid(path):
    book = playbook.load(str(path))
    assert book.name == path.stem and book.ladder
