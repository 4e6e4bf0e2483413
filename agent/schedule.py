"""`wan-agent schedule`: a `wan-agent rebench` at fixed times, as a systemd user timer where a user manager answers,
else as a crontab line; `--list` and `--remove NAME` see both.

A schedule NAME is a config file, $XDG_CONFIG_HOME/wan-agent/rebench-NAME.yaml (mode 0600: it may hold the webhook
URL, a secret kept out of units, the crontab and logs), and `command()`, run from the repository root.
Cron runs a job when its day of month *or* its day of week matches (both given, neither starting with '*'); systemd
wants both, so such an expression is refused for systemd rather than silently meaning something else.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from agent import playbook, rebench, sources
from agent.files import atomic_path

logger = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parent.parent
UNIT = "wan-agent-rebench-"
MARK = " # wan-agent-rebench:"  # ends our crontab lines: the only lines we replace or drop
NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
EVERY = ("hourly", "daily", "weekly")  # the same word for cron's @WORD and systemd's OnCalendar
FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day-of-month", 1, 31), ("month", 1, 12), ("day-of-week", 0, 7))
ELEMENT = re.compile(r"(\*|(\d+)(?:-(\d+))?)(?:/(\d+))?")
DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")  # systemd's order; cron's 0 and 7 are both Sunday
TIMEOUT_S = 30


class ScheduleError(ValueError):
    """Bad input, or no way to schedule on this machine; the message says what to do."""


def config_home() -> Path:
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")


def config_path(name: str) -> Path:
    return config_home() / "wan-agent" / f"rebench-{name}.yaml"


def unit_dir() -> Path:
    return config_home() / "systemd" / "user"


def command(config_file: Path, runs_dir: Path) -> list[str]:
    """What every scheduled run executes, from REPO: the single source of the systemd unit and of the crontab line."""
    return [sys.executable, "-m", "agent.cli", "--runs-dir", str(Path(runs_dir).resolve()), "rebench", "--config",
            str(Path(config_file).resolve())]  # fmt: skip


def _run(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT_S, **kwargs)
    except subprocess.TimeoutExpired:
        raise ScheduleError(f"`{' '.join(argv[:3])}` did not answer within {TIMEOUT_S} s") from None


def parse_cron(expr: str) -> list[list[tuple[int, int, int, bool]]]:
    """Each field of a 5-field cron expression as (first, last, step, was '*') elements; refuses what cron would not run."""
    fields = expr.split()
    if len(fields) != 5:
        raise ScheduleError(f"--every {expr!r}: use hourly, daily, weekly or a cron expression of 5 fields "
                            "(minute hour day-of-month month day-of-week), e.g. '30 3 * * 1-5'")  # fmt: skip
    parsed = []
    for text, (field, lo, hi) in zip(fields, FIELDS, strict=True):
        elements = []
        for part in text.split(","):
            m = ELEMENT.fullmatch(part)
            if not m or (m[4] and m[2] and not m[3]):
                raise ScheduleError(f"cron {field} field {text!r}: use *, N, A-B, lists A,B, */N or A-B/N; values {lo}-{hi}")
            first, last = (lo, hi) if m[1] == "*" else (int(m[2]), int(m[3] or m[2]))
            if not lo <= first <= last <= hi or (m[4] and int(m[4]) == 0):
                raise ScheduleError(f"cron {field} field {text!r}: values must lie in {lo}-{hi}, ranges run low to high, "
                                    "steps are 1 or more")  # fmt: skip
            elements.append((first, last, int(m[4] or 1), m[1] == "*"))
        parsed.append(elements)
    return parsed


def _calendar_field(elements: list[tuple[int, int, int, bool]]) -> str:
    parts = []
    for first, last, step, star in elements:
        if star and step == 1:
            return "*"
        every = f"/{step}" if step > 1 else ""
        parts.append(f"{first:02d}{every}" if star else f"{first:02d}" if first == last else f"{first:02d}..{last:02d}{every}")
    return ",".join(parts)


def on_calendar(every: str) -> str:
    """systemd's OnCalendar= for ``every`` (hourly, daily, weekly or a cron expression)."""
    if every in EVERY:
        return every
    minute, hour, dom, month, dow = parse_cron(every)
    fields = every.split()
    if not fields[2].startswith("*") and not fields[4].startswith("*"):
        raise ScheduleError(f"--every {every!r}: cron runs when the day of month OR the day of week matches, systemd only "
                            "when both do; give one of them as '*', or use --using cron")  # fmt: skip
    days = sorted({(d % 7 - 1) % 7 for first, last, step, _ in dow for d in range(first, last + 1, step)})
    spans: list[list[int]] = []
    for d in days:  # consecutive days as one range, Monday first: cron's 0-6 is systemd's Mon..Sun
        if spans and d == spans[-1][1] + 1:
            spans[-1][1] = d
        else:
            spans.append([d, d])
    weekdays = "" if len(days) == 7 else ",".join(DAYS[a] if a == b else f"{DAYS[a]}..{DAYS[b]}" for a, b in spans) + " "
    return f"{weekdays}*-{_calendar_field(month)}-{_calendar_field(dom)} {_calendar_field(hour)}:{_calendar_field(minute)}:00"


def check_calendar(expr: str) -> None:
    """Let systemd itself judge the OnCalendar expression, where systemd-analyze exists."""
    if shutil.which("systemd-analyze"):
        done = _run(["systemd-analyze", "calendar", expr])
        if done.returncode:
            raise ScheduleError(f"systemd refuses OnCalendar={expr}: {done.stderr.strip()}")


def _write(path: Path, text: str, mode: int) -> None:
    """Whole or not at all (agent.files.atomic_path), with its mode from the first byte: the config may hold a secret."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with atomic_path(path) as tmp, open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), "w") as f:
        os.fchmod(f.fileno(), mode)  # a stale temporary file would keep its own mode
        f.write(text)


def _systemd_quote(arg: str) -> str:
    # systemd expands %specifiers and $VARIABLES even inside quotes: doubled, they stand for themselves.
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$") + '"'


def write_units(name: str, every: str, config: Path, runs_dir: Path, directory: Path) -> tuple[Path, Path]:
    """Write wan-agent-rebench-NAME.service and .timer into ``directory``; return their paths."""
    calendar = on_calendar(every)  # refuses a bad expression before either file is written
    service, timer = directory / f"{UNIT}{name}.service", directory / f"{UNIT}{name}.timer"
    exec_start = " ".join(_systemd_quote(arg) for arg in command(config, runs_dir))
    _write(service, f"[Unit]\nDescription=wan-agent rebench {name}: search again for the fastest Wan2.2 configuration\n\n"
                    f"[Service]\nType=oneshot\nWorkingDirectory={str(REPO).replace('%', '%%')}\nExecStart={exec_start}\n",
           0o644)  # fmt: skip
    _write(timer, f"[Unit]\nDescription=wan-agent rebench {name} ({every})\n\n[Timer]\nOnCalendar={calendar}\n"
                  "Persistent=true\n\n[Install]\nWantedBy=timers.target\n", 0o644)  # fmt: skip
    return service, timer


def verify_units(*units: Path) -> None:
    """`systemd-analyze verify --user`: any word about our units fails; a verifier that cannot run here only warns."""
    if not shutil.which("systemd-analyze"):
        return
    # It needs a runtime directory (none in a container, or over ssh without a session), not a running manager.
    with tempfile.TemporaryDirectory() as runtime:
        env = {**os.environ, "XDG_RUNTIME_DIR": runtime, "SYSTEMD_UNIT_PATH": f"{units[0].parent}:"}
        done = _run(["systemd-analyze", "verify", "--user", *map(str, units)], env=env)
    said = (done.stdout + done.stderr).strip()
    ours = [line for line in said.splitlines() if any(unit.name in line for unit in units)]
    if ours:
        raise ScheduleError("systemd-analyze verify rejects the units: " + "; ".join(ours))
    if done.returncode:
        logger.warning("systemd-analyze verify could not run here, units not verified: %s", said.replace("\n", "; "))


def cron_line(name: str, every: str, config: Path, runs_dir: Path) -> str:
    when = f"@{every}" if every in EVERY else " ".join(every.split())
    run = " ".join(shlex.quote(arg) for arg in command(config, runs_dir))
    log = shlex.quote(str(Path(runs_dir).resolve() / f"rebench-{name}.log"))
    return f"{when} cd {shlex.quote(str(REPO))} && {run} >> {log} 2>&1{MARK}{name}"


def _marked(line: str) -> str | None:
    m = re.search(re.escape(MARK) + r"([a-z0-9-]+)$", line)
    return m[1] if m else None


def read_crontab() -> list[str]:
    """The current user's crontab lines; none without a crontab (or without cron)."""
    if not shutil.which("crontab"):
        return []
    done = _run(["crontab", "-l"])
    if done.returncode and "no crontab" not in done.stderr:
        raise ScheduleError(f"crontab -l: {done.stderr.strip()}")
    return done.stdout.splitlines() if done.returncode == 0 else []


def _replace_cron_line(name: str, line: str | None) -> None:
    """Drop the line marked NAME, add ``line`` if given; every other line stays as it was."""
    lines = [kept for kept in read_crontab() if _marked(kept) != name] + ([line] if line else [])
    done = _run(["crontab", "-"], input="".join(kept + "\n" for kept in lines))
    if done.returncode:
        raise ScheduleError(f"crontab -: {done.stderr.strip()}")


def _systemctl(*args: str, check: bool = True) -> None:
    done = _run(["systemctl", "--user", *args])
    if done.returncode and check:
        raise ScheduleError(f"systemctl --user {' '.join(args)}: {done.stderr.strip()}")
    if done.returncode:
        logger.warning("systemctl --user %s: %s", " ".join(args), done.stderr.strip())


def _user_manager() -> str | None:
    """None when a systemd user manager answers, else why not."""
    if not shutil.which("systemctl"):
        return "no systemctl"
    done = _run(["systemctl", "--user", "show-environment"])  # its output (an environment) is never shown
    return None if done.returncode == 0 else done.stderr.strip() or f"exit status {done.returncode}"


def installed() -> list[dict]:
    """The wan-agent schedules: systemd timers in the user unit directory, then marked crontab lines."""
    rows = []
    for timer in sorted(unit_dir().glob(f"{UNIT}*.timer")):
        name = timer.stem.removeprefix(UNIT)
        when = next((line[11:] for line in timer.read_text().splitlines() if line.startswith("OnCalendar=")), "?")
        rows.append({"name": name, "how": "systemd", "when": when, "config": str(config_path(name))})
    for line in read_crontab():
        cron_name = _marked(line)
        if cron_name:
            when, _, rest = line.partition(" cd ")
            try:
                words = shlex.split(rest.removesuffix(f"{MARK}{cron_name}"))
            except ValueError:  # a marked line edited by hand
                words = []
            config = words[words.index("--config") + 1] if "--config" in words[:-1] else "?"
            rows.append({"name": cron_name, "how": "cron", "when": when, "config": config})
    return rows


def remove(name: str) -> None:
    rows = installed()
    configs = (config_home() / "wan-agent").glob("rebench-*.yaml")
    known = {r["name"] for r in rows} | {p.stem.removeprefix("rebench-") for p in configs}
    if name not in known:
        raise ScheduleError(f"no schedule named {name!r}; known: {', '.join(sorted(known)) or 'none'}")
    timer = unit_dir() / f"{UNIT}{name}.timer"
    if timer.exists():
        _systemctl("disable", "--now", timer.name, check=False)  # without a manager: the files still go
        for unit in (timer, timer.with_suffix(".service"), unit_dir() / "timers.target.wants" / timer.name):
            unit.unlink(missing_ok=True)
        _systemctl("daemon-reload", check=False)
    for row in rows:
        if row["name"] == name and row["how"] == "cron":
            _replace_cron_line(name, None)
            if Path(row["config"]).name == f"rebench-{name}.yaml":  # the line's own: it may be of another XDG_CONFIG_HOME
                Path(row["config"]).unlink(missing_ok=True)
    config_path(name).unlink(missing_ok=True)
    logger.info("removed schedule %s", name)


def _checked_playbook(name: str) -> str:
    """A typo fails now rather than at 3 a.m.; a path becomes absolute, since the run starts in the repository."""
    if name == "auto":
        return name
    try:
        playbook.load(name)
    except playbook.PlaybookError as err:
        raise ScheduleError(str(err)) from None
    return str(Path(name).resolve()) if playbook.find(name) == Path(name) else name


def _backend(using: str, line: str) -> str:
    if using == "cron":
        if not shutil.which("crontab"):
            raise ScheduleError("--using cron: no crontab command here; install cron (apt-get install cron)")
        return "cron"
    why = _user_manager()
    if why is None:
        return "systemd"
    if using == "systemd":
        raise ScheduleError(f"--using systemd: no systemd user manager answers here ({why}); use --using cron, or "
                            "start one (loginctl enable-linger $USER, then log in again)")  # fmt: skip
    if shutil.which("crontab"):
        return "cron"
    raise ScheduleError(f"no systemd user manager ({why}) and no crontab here: install cron (apt-get install cron) or "
                        "start a user manager (loginctl enable-linger $USER), then run this again; or add this crontab "
                        f"line yourself:\n{line}")  # fmt: skip


def install(args: argparse.Namespace) -> str:
    """Check everything, then write the config and the timer or crontab line; on a failure, leave nothing behind."""
    every, name, runs_dir, config = args.every, args.name, Path(args.runs_dir).resolve(), config_path(args.name)
    if args.using == "systemd":
        on_calendar(every)  # what systemd cannot express is bad input, told before the machine is asked anything
    elif every not in EVERY:
        parse_cron(every)
    if any(c in str(p) for p in (REPO, runs_dir, config, Path(sys.executable)) for c in "%\n"):
        raise ScheduleError("a path with '%' or a newline cannot go into a crontab line or unit; use other directories")
    settings = {"name": name, "playbook": _checked_playbook(args.playbook), "source": args.source,
                "runs_dir": str(runs_dir), "webhook_url": rebench.webhook_from(args.webhook_url_file)}  # fmt: skip
    if args.source and args.source != "synthetic" and not sources.is_known(args.source):
        raise ScheduleError(f"--source {args.source!r}: use 'synthetic', a variant or SCHEME:... ({', '.join(sources.SCHEMES)})")
    how = _backend(args.using, cron_line(name, every, config, runs_dir))
    other = [r["how"] for r in installed() if r["name"] == name and r["how"] != how]
    if other:
        raise ScheduleError(f"{name!r} is scheduled with {other[0]}: `wan-agent schedule --remove {name}` first")
    if how == "systemd":
        check_calendar(on_calendar(every))
        with tempfile.TemporaryDirectory() as scratch:  # verified before anything is put in place
            verify_units(*write_units(name, every, config, runs_dir, Path(scratch)))
    before = config.read_text() if config.exists() else None
    runs_dir.mkdir(parents=True, exist_ok=True)  # cron appends its log there
    _write(config, yaml.safe_dump(settings, sort_keys=False), 0o600)
    try:
        if how == "systemd":
            timer = write_units(name, every, config, runs_dir, unit_dir())[1]
            _systemctl("daemon-reload")
            _systemctl("enable", "--now", timer.name)
            return f"{name}: rebench at {on_calendar(every)} (systemd timer {timer.name}); config {config}"
        line = cron_line(name, every, config, runs_dir)
        _replace_cron_line(name, line)
        return f"{name}: rebench at '{line.partition(' cd ')[0]}' (cron); config {config}; log {runs_dir}/rebench-{name}.log"
    except BaseException:
        for suffix in (".service", ".timer") if how == "systemd" else ():
            (unit_dir() / f"{UNIT}{name}{suffix}").unlink(missing_ok=True)
        if before is None:
            config.unlink(missing_ok=True)
        else:
            _write(config, before, 0o600)
        raise


def cmd_schedule(args: argparse.Namespace) -> int:
    for given in (args.name, args.remove):
        if given is not None and not NAME.fullmatch(given):
            raise ScheduleError(f"schedule name {given!r}: lowercase letters, digits and '-' only (it names files and units)")
    if args.list:
        rows = installed()
        for row in rows:
            print("\t".join((row["name"], row["how"], row["when"], row["config"])))
        if not rows:
            logger.info("no wan-agent schedules (in %s or the crontab)", unit_dir())
        return 0
    if args.remove:
        remove(args.remove)
        print(f"removed {args.remove}")
        return 0
    print(install(args))
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("schedule", help="run `rebench` at fixed times (systemd user timer, else cron); --list, --remove")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--every", help="hourly, daily, weekly or a 5-field cron expression in quotes, e.g. '30 3 * * 1-5'")
    what.add_argument("--list", action="store_true", help="the installed schedules: name, how, when, config file")
    what.add_argument("--remove", metavar="NAME", help="stop and delete a schedule")
    p.add_argument("--name", default="default", help="names the schedule (a-z, 0-9, '-'; default: default)")
    p.add_argument("--playbook", default="auto", help="name in playbooks/, a path, or 'auto' (default)")
    p.add_argument("--source", help="the model's source for the runs, e.g. 'synthetic' (default: the playbook's)")
    p.add_argument("--webhook-url-file", help="a file holding the webhook URL to notify (else $WAN_AGENT_WEBHOOK_URL)")
    p.add_argument("--using", choices=("auto", "systemd", "cron"), default="auto",
                   help="auto (default): systemd when a user manager answers, else cron")  # fmt: skip
    p.set_defaults(func=cmd_schedule)
