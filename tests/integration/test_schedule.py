"""`wan-agent schedule` with this machine's real crontab and systemd tools: what the crontab line or the unit runs is
run exactly as written; the units pass `systemd-analyze verify`; the webhook URL reaches the config file only; bad
input exits 2; other crontab lines are left as they were."""

from __future__ import annotations

import logging
import os
import secrets
import shlex
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

from agent import cli, schedule
from tests.conftest import ROOT

needs_crontab = pytest.mark.skipif(
    shutil.which("crontab") is None, reason="no crontab: apt-get install cron (./start_wan.sh --dev does, as root)"
)
needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze on this machine")
CRON_ENV = {"HOME": str(Path.home()), "LOGNAME": os.environ.get("USER", "root"), "PATH": "/usr/bin:/bin", "SHELL": "/bin/sh"}


def crontab_lines() -> list[str]:
    done = subprocess.run(["crontab", "-l"], capture_output=True, text=True, timeout=30)
    return done.stdout.splitlines() if done.returncode == 0 else []


def set_crontab(lines: list[str]) -> None:
    subprocess.run(["crontab", "-"], input="".join(f"{line}\n" for line in lines), text=True, check=True, timeout=30)


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An XDG_CONFIG_HOME and runs folder of this test's own, no webhook in the environment."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("WAN_AGENT_WEBHOOK_URL", raising=False)
    return tmp_path


@pytest.fixture
def crontab():
    """This user's real crontab with an unrelated line added; afterwards only the lines of this test are taken out."""
    token = secrets.token_hex(4)
    unrelated = f"17 4 * * * true # not wan-agent's {token}"
    had_one = subprocess.run(["crontab", "-l"], capture_output=True, timeout=30).returncode == 0
    set_crontab([*crontab_lines(), unrelated])
    try:
        yield token, unrelated
    finally:
        kept = [line for line in crontab_lines() if token not in line]
        if kept or had_one:
            set_crontab(kept)
        else:  # there was none: leave none
            subprocess.run(["crontab", "-r"], capture_output=True, timeout=30)


def nothing_written(home: Path) -> bool:
    """No config and no unit (other libraries may put their own folders under XDG_CONFIG_HOME)."""
    return not (home / "config" / "wan-agent").exists() and not (home / "config" / "systemd").exists()


def wan_schedule(runs: Path, *argv: str) -> int:
    return cli.main(["--runs-dir", str(runs), "schedule", *argv])


def marked(name: str) -> list[str]:
    return [line for line in crontab_lines() if line.endswith(f" # wan-agent-rebench:{name}")]


def point_at_missing_playbook(config: Path, token: str) -> str:
    """Rewrite the schedule's config so that its run stops at once on bad input (exit 2), naming the playbook."""
    settings = yaml.safe_load(config.read_text())
    settings["playbook"] = f"no-such-playbook-{token}"
    config.write_text(yaml.safe_dump(settings, sort_keys=False))
    return settings["playbook"]


@needs_crontab
def test_the_crontab_line_runs_exactly_the_command_and_leaves_other_lines(home, crontab, capsys):
    token, unrelated = crontab
    name, runs, config = f"t-{token}", home / "runs", home / "config" / "wan-agent" / f"rebench-t-{token}.yaml"
    assert wan_schedule(runs, "--every", "30 3 * * 1-5", "--name", name, "--using", "cron", "--source", "synthetic") == 0
    assert str(config) in capsys.readouterr().out
    assert wan_schedule(runs, "--every", "30 3 * * 1-5", "--name", name, "--using", "cron") == 0  # replaces, no second line
    [line] = marked(name)
    assert unrelated in crontab_lines()
    assert line.startswith("30 3 * * 1-5 ")
    run = line.split(None, 5)[5].removesuffix(f" # wan-agent-rebench:{name}")
    log = runs / f"rebench-{name}.log"
    assert run == f"cd {shlex.quote(str(ROOT))} && {shlex.join(schedule.command(config, runs))} >> {shlex.quote(str(log))} 2>&1"
    assert yaml.safe_load(config.read_text()) == {
        "name": name, "playbook": "auto", "source": None, "runs_dir": str(runs), "webhook_url": None
    }  # fmt: skip
    capsys.readouterr()
    assert wan_schedule(runs, "--list") == 0
    assert f"{name}\tcron\t30 3 * * 1-5\t{config}" in capsys.readouterr().out.splitlines()

    # What cron runs, as cron runs it: /bin/sh -c, its bare environment.
    missing = point_at_missing_playbook(config, token)
    done = subprocess.run(["/bin/sh", "-c", run], env=CRON_ENV, capture_output=True, text=True, timeout=300)
    said = log.read_text()
    assert done.returncode == 2, said
    assert "wan-agent: " in said and missing in said

    assert wan_schedule(runs, "--remove", name) == 0
    assert marked(name) == [] and unrelated in crontab_lines() and not config.exists()


@needs_crontab
def test_the_webhook_url_reaches_the_config_file_only(home, crontab, capsys, caplog, monkeypatch):
    caplog.set_level(logging.DEBUG)
    token, unrelated = crontab
    name, runs, config = f"t-{token}", home / "runs", home / "config" / "wan-agent" / f"rebench-t-{token}.yaml"
    in_file, in_env = (f"https://hooks.example.invalid/services/{secrets.token_hex(16)}" for _ in range(2))
    (home / "hook").write_text(in_file + "\n")
    cron = ("--name", name, "--using", "cron", "--webhook-url-file", str(home / "hook"))
    try:
        assert wan_schedule(runs, "--every", "daily", *cron) == 0
        assert yaml.safe_load(config.read_text())["webhook_url"] == in_file
        assert stat.S_IMODE(config.stat().st_mode) == 0o600
        [line] = marked(name)
        assert line.startswith("@daily cd ")
        monkeypatch.setenv("WAN_AGENT_WEBHOOK_URL", in_env)  # the flag's file wins over the environment
        assert wan_schedule(runs, "--every", "daily", *cron) == 0
        assert yaml.safe_load(config.read_text())["webhook_url"] == in_file
        assert wan_schedule(runs, "--every", "weekly", *cron[:4]) == 0  # no file: the environment's
        assert yaml.safe_load(config.read_text())["webhook_url"] == in_env
        assert stat.S_IMODE(config.stat().st_mode) == 0o600
        assert [line.split()[0] for line in marked(name)] == ["@weekly"]
        assert wan_schedule(runs, "--list") == 0
        (home / "hook").write_text("not a url " + in_file)
        monkeypatch.delenv("WAN_AGENT_WEBHOOK_URL")
        assert wan_schedule(runs, "--every", "daily", *cron) == 2
        seen = capsys.readouterr()
        for secret in (in_file, in_env):
            assert secret not in "\n".join(crontab_lines()) + seen.out + seen.err + caplog.text
        assert "does not hold an http(s) URL" in seen.err
        assert yaml.safe_load(config.read_text())["webhook_url"] == in_env  # the refused install changed nothing
    finally:
        wan_schedule(runs, "--remove", name)
    assert marked(name) == [] and unrelated in crontab_lines() and not config.exists()


def write_config(home: Path, name: str) -> tuple[Path, Path]:
    config, runs = home / f"rebench-{name}.yaml", home / "runs"
    settings = {"name": name, "playbook": "auto", "source": None, "runs_dir": str(runs), "webhook_url": None}
    config.write_text(yaml.safe_dump(settings, sort_keys=False))
    return config, runs


def unit_value(unit: Path, key: str) -> str:
    return next(line.partition("=")[2] for line in unit.read_text().splitlines() if line.startswith(f"{key}="))


@needs_analyze
def test_the_units_pass_systemd_analyze(home):
    token = secrets.token_hex(4)
    config, runs = write_config(home, f"t-{token}")
    service, timer = schedule.write_units(f"t-{token}", "30 3 * * 1-5", config, runs, home / "units")
    runtime = home / "runtime"  # verify needs a runtime directory, not a running manager
    runtime.mkdir(mode=0o700)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime), "SYSTEMD_UNIT_PATH": f"{home / 'units'}:"}
    done = subprocess.run(["systemd-analyze", "verify", "--user", str(service), str(timer)],
                          env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0 and service.name not in done.stdout + done.stderr, done.stderr
    calendar = unit_value(timer, "OnCalendar")
    done = subprocess.run(["systemd-analyze", "calendar", calendar], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "Normalized form: Mon..Fri *-*-* 03:30:00" in done.stdout
    schedule.verify_units(service, timer)
    with service.open("a") as f:
        f.write("Restart=sometimes\n")  # content systemd refuses is an error, not an environmental warning
    with pytest.raises(schedule.ScheduleError, match="restart specifier"):
        schedule.verify_units(service, timer)


def test_the_unit_runs_exactly_its_command_and_is_listed_and_removed(home, capsys):
    token = secrets.token_hex(4)
    name = f"t-{token}"
    config, runs = write_config(home, name)
    service, timer = schedule.write_units(name, "30 3 * * 1-5", config, runs, schedule.unit_dir())
    assert unit_value(timer, "OnCalendar") == "Mon..Fri *-*-* 03:30:00" and unit_value(service, "Type") == "oneshot"
    exec_start, cwd = unit_value(service, "ExecStart"), unit_value(service, "WorkingDirectory")
    assert "%" not in exec_start + cwd and "$" not in exec_start  # no systemd specifiers: shlex reads it as systemd does
    argv = shlex.split(exec_start)
    assert argv == schedule.command(config, runs) and cwd == str(ROOT)
    missing = point_at_missing_playbook(config, token)
    done = subprocess.run(argv, cwd=cwd, env=CRON_ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "wan-agent: " in done.stderr and missing in done.stderr, done.stderr

    assert wan_schedule(runs, "--list") == 0
    assert f"{name}\tsystemd\tMon..Fri *-*-* 03:30:00\t{schedule.config_path(name)}" in capsys.readouterr().out.splitlines()
    assert wan_schedule(runs, "--remove", name) == 0  # without a user manager: the files go all the same
    assert not service.exists() and not timer.exists()


@pytest.mark.skipif(
    subprocess.run(["systemctl", "--user", "show-environment"], capture_output=True).returncode == 0
    if shutil.which("systemctl") else True,
    reason="needs systemctl without a user manager answering (here one would really install the timer)",
)  # fmt: skip
def test_systemd_without_a_user_manager_exits_2_and_writes_nothing(home, capsys):
    assert wan_schedule(home / "runs", "--every", "daily", "--name", "t-nomanager", "--using", "systemd") == 2
    assert "no systemd user manager answers here" in capsys.readouterr().err
    assert nothing_written(home) and not (home / "runs").exists()


def test_without_any_scheduler_it_says_what_to_install_and_prints_the_line(home, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(home))  # neither systemctl nor crontab
    assert wan_schedule(home / "runs", "--every", "daily", "--name", "t-none") == 2
    err = capsys.readouterr().err
    assert "apt-get install cron" in err and "@daily cd " in err and "# wan-agent-rebench:t-none" in err
    assert nothing_written(home)


@pytest.mark.parametrize(
    "argv, said",
    [
        (["--every", "61 * * * *"], "minute field '61': values must lie in 0-59"),
        (["--every", "0 3 * *"], "cron expression of 5 fields"),
        (["--every", "0 3 1 * 1", "--using", "systemd"], "day of month OR the day of week"),
        (["--every", "daily", "--name", "x;rm -rf /"], "lowercase letters, digits and '-' only"),
        (["--every", "daily", "--playbook", "no-such-playbook"], "playbook 'no-such-playbook' not found"),
        (["--remove", "nosuch"], "no schedule named 'nosuch'; known:"),
    ],
)
def test_bad_input_exits_2_and_says_why(home, capsys, argv, said):
    assert wan_schedule(home / "runs", *argv) == 2
    assert said in capsys.readouterr().err
    assert nothing_written(home)
