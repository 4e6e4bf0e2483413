"""`wan-agent rebench`, what a schedule runs (agent/schedule.py): a run on this machine, judged against the previous
best of its hardware (the comparison the run makes when it ends, agent/history.py). The verdict goes to
``runs/rebench-latest.json``, to the exit status (1 on a regression or a failed run), and, when a webhook is
configured, to a JSON POST. The webhook's URL is a secret (chat webhooks carry their token in the path): only its
scheme and host are ever logged or written.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import re
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from agent.files import read_json, write_json_atomic
from agent.history import COMPARISON_FILE

logger = logging.getLogger(__name__)

LATEST_FILE = "rebench-latest.json"
WEBHOOK_ENV = "WAN_AGENT_WEBHOOK_URL"
FAILING = ("regression", "run failed", "not compared")  # the verdicts that exit 1


class RebenchError(ValueError):
    """A rebench configuration that cannot be used; the message says which field and what is allowed."""


class Config(BaseModel):
    """What a scheduled rebench runs (the file agent/schedule.py writes, mode 0600: it may hold the webhook)."""

    model_config = ConfigDict(extra="forbid")
    name: str = "default"
    playbook: str = "auto"
    source: str | None = None
    runs_dir: str | None = None
    webhook_url: str | None = None


def load_config(path: Path) -> Config:
    try:
        data = yaml.safe_load(path.read_text())
        return Config.model_validate(data or {})
    except OSError as err:
        raise RebenchError(f"rebench config {path}: {err.strerror}; `wan-agent schedule --list` names the files") from None
    except yaml.YAMLError as err:
        raise RebenchError(f"rebench config {path} is not YAML: {str(err).splitlines()[0]}") from None
    except ValidationError as err:
        said = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'file'}: {e['msg']}" for e in err.errors())
        raise RebenchError(f"rebench config {path}: {said} (keys: {', '.join(Config.model_fields)})") from None


def webhook_from(url_file: str | None) -> str | None:
    """The webhook URL from a file (so that it is on no command line), else from $WAN_AGENT_WEBHOOK_URL; its content is
    never shown, even when it is not a URL."""
    origin, url = f"${WEBHOOK_ENV}", os.environ.get(WEBHOOK_ENV, "").strip()
    if url_file:
        origin = f"--webhook-url-file {url_file}"
        try:
            url = Path(url_file).read_text().strip()
        except OSError as err:
            raise RebenchError(f"{origin}: {err.strerror}") from None
    if url and not re.fullmatch(r"https?://\S+", url):
        raise RebenchError(f"{origin} does not hold an http(s) URL (its content is not shown: it may be a secret)")
    return url or None


def redacted(url: str) -> str:
    """Where a webhook goes, without what makes it a secret (user, path, query)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}/…"


def verdict(runs_dir: Path, run_id: str, state: dict) -> dict:
    """The outcome of a rebench run: converged or not, and against the previous best of this hardware."""
    run_dir = runs_dir / run_id if run_id else None  # none when the run could not even start
    comparison = read_json(run_dir / COMPARISON_FILE) if run_dir and state.get("status") == "converged" else None
    if state.get("status") != "converged":
        said = "run failed"
    elif comparison is None:
        said = "first run of this hardware"
    elif "error" in comparison:  # there was an earlier run, and comparing with it failed: never a silent pass
        said = "not compared"
    else:
        said = "regression" if comparison["regressions"] else "no regression"
    record = (read_json(run_dir / "run.json") if run_dir else None) or {}
    return {
        "run_id": run_id or None,
        "finished_at": round(time.time(), 3),
        "verdict": said,
        "status": state.get("status"),
        **({"error": state["error"]} if state.get("error") else {}),
        "hardware_fingerprint": (record.get("hardware") or {}).get("fingerprint"),
        "playbook": (record.get("playbook") or {}).get("name"),
        "previous": (comparison or {}).get("a"),
        "regressions": (comparison or {}).get("regressions", []),
        "converged": (comparison or {}).get("converged"),
        "differences": (comparison or {}).get("differences", []),
        **({"comparison_error": comparison["error"]} if comparison and "error" in comparison else {}),
        "journal": str(run_dir / "journal.md") if run_dir else None,
        "report": str(run_dir / "report.html") if run_dir else None,
    }


def post(url: str, result: dict, timeout_s: float = 10.0) -> dict:
    """POST the verdict as JSON; what happened, with the URL redacted. A webhook that fails never fails the rebench."""
    where = "the webhook"
    try:
        where = redacted(url)
        request = urllib.request.Request(url, data=json.dumps(result).encode(), method="POST",
                                         headers={"Content-Type": "application/json", "User-Agent": "wan-agent"})  # fmt: skip
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            outcome = {"to": where, "status": response.status}
    except urllib.error.HTTPError as err:
        outcome = {"to": where, "status": err.code, "error": f"HTTP {err.code}"}
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as err:
        outcome = {"to": where, "error": type(err).__name__}  # the reason may quote the URL
    if "error" in outcome:
        logger.warning("webhook %s: %s; the verdict is in %s", where, outcome["error"], LATEST_FILE)
    else:
        logger.info("verdict posted to %s (HTTP %s)", where, outcome["status"])
    return outcome


def publish(runs_dir: Path, result: dict, webhook_url: str | None) -> dict:
    """Write ``runs/rebench-latest.json`` and POST it where configured; the file says how the POST went."""
    write_json_atomic(runs_dir / LATEST_FILE, result)
    if webhook_url:
        result = result | {"webhook": post(webhook_url, result)}
        write_json_atomic(runs_dir / LATEST_FILE, result)
    return result
