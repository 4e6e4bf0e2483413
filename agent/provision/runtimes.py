"""Environments for runtimes that need packages the agent's own environment does not pin: the official Wan2.2 code.

Made by provision when the playbook has a rung that may run the official runtime on this hardware (a venv from
``locks/official.txt`` over the agent's site-packages, so it adds wan22 and its modules' needs without a second torch;
from ``WAN_AGENT_WHEELHOUSE`` with no network when that is set), reused while the lock is unchanged, and recorded:
its interpreter runs those trials, and its ``pip freeze`` lies beside the run.
"""

from __future__ import annotations

import os
import sysconfig
from pathlib import Path

from agent.capabilities import cannot_run
from agent.provision import venv
from agent.runtime.config import Knobs

OFFICIAL_LOCK = Path(__file__).resolve().parent.parent.parent / "locks" / "official.txt"


def wanted(book: dict, hardware: dict) -> bool:
    """Whether a trial of this playbook may run the official runtime here: the baseline, or a rung set on it."""
    baseline = book["baseline"]
    for change in [{}, *(rung["set"] for rung in book["ladder"])]:
        knobs = Knobs.model_validate(baseline | {k: v for k, v in change.items() if k != "workload"})
        if knobs.runtime == "official" and cannot_run(knobs, hardware, book["device"]) is None:
            return True
    return False


def official(root: Path) -> dict:
    """The official runtime's environment under ``root``: what the journal and run.json record, with ``python`` the
    interpreter its trials run with; ``error`` (and no ``python``) when it could not be made."""
    wheelhouse = os.environ.get("WAN_AGENT_WHEELHOUSE")
    record: dict = {"lock": str(OFFICIAL_LOCK), "wheelhouse": wheelhouse}
    try:
        env = venv.ensure(OFFICIAL_LOCK, root, Path(wheelhouse) if wheelhouse else None, Path(sysconfig.get_paths()["purelib"]))
    except venv.EnvironmentFailed as err:
        fix = "set WAN_AGENT_WHEELHOUSE to a folder holding the lock's wheels (pip download --no-deps -r locks/official.txt)"
        return record | {"error": f"{err}; {fix}"}
    return record | {"python": str(env.python), "path": str(env.path), "lock_sha256": env.lock_sha256, "reused": env.reused}
