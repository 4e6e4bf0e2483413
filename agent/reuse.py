"""When a converged run may stand in for a new search: same hardware, same versions of what sets the speed, same
playbook as resolved (the prompt aside: trials' cost does not depend on it). Each run that is passed over says why.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import yaml

logger = logging.getLogger(__name__)

# Packages whose upgrade can change a trial's speed (kernels, fusion, the pipeline's own loop).
SPEED_PACKAGES = ("torch", "diffusers", "transformers", "torchao", "fa3-fwd", "flash_attn_3", "accelerate", "peft")


def key(playbook: dict, hardware: dict, versions: dict) -> dict:
    """What a converged run was measured under, as compared for reuse."""
    resolved = playbook | {"workload": {k: v for k, v in playbook["workload"].items() if k not in ("prompt", "negative_prompt")}}
    speed = {name: versions.get(name) for name in SPEED_PACKAGES}
    speed["cuda"] = hardware.get("torch_cuda")
    speed["driver"] = next((g["driver"] for g in hardware.get("gpus", [])), None)
    return {
        "hardware_fingerprint": hardware["fingerprint"],
        "versions": speed,
        "playbook_sha256": hashlib.sha256(json.dumps(resolved, sort_keys=True, default=str).encode()).hexdigest()[:16],
    }


def differences(old: dict, new: dict) -> list[str]:
    """What differs between two keys, in words ('torch 2.9.1 -> 2.10.0', 'the playbook changed')."""
    said = []
    if old.get("hardware_fingerprint") != new["hardware_fingerprint"]:
        said.append(f"other hardware ({old.get('hardware_fingerprint')} vs {new['hardware_fingerprint']})")
    old_versions = old.get("versions") or {}
    for name, version in new["versions"].items():
        if old_versions.get(name) != version:
            said.append(f"{name} {old_versions.get(name) or 'absent'} -> {version or 'absent'}")
    if old.get("playbook_sha256") != new["playbook_sha256"]:
        said.append("the playbook changed (ladder, workload, knobs or rules)")
    return said


def read_best(best_file: Path) -> dict | None:
    try:
        best = yaml.safe_load(best_file.read_text())
    except (OSError, yaml.YAMLError) as err:
        logger.warning("skipping %s: not readable YAML (%s)", best_file, str(err).splitlines()[0])
        return None
    if not isinstance(best, dict) or not isinstance(best.get("knobs"), dict):
        logger.warning("skipping %s: not a converged configuration (empty or malformed)", best_file)
        return None
    return best


def find_converged(runs_dir: Path, wanted: dict) -> str | None:
    """The newest converged run measured under ``wanted`` (see ``key``); each newer run passed over says why."""
    for best_file in sorted(runs_dir.glob("*/best.yaml"), reverse=True):
        best = read_best(best_file)
        if best is None:
            continue
        run_id = best_file.parent.name
        found = best.get("reuse_key")
        if not isinstance(found, dict):
            logger.info("not reusing run %s: it predates reuse keys (versions and playbook unknown)", run_id)
            continue
        changed = differences(found, wanted)
        if not changed and best.get("unresolved"):
            logger.info("not reusing run %s: the host's noise left %s unresolved", run_id, ", ".join(best["unresolved"]))
            continue
        if not changed:
            logger.info("reusing converged run %s: same hardware, versions and playbook; --rebench searches again", run_id)
            return run_id
        logger.info("not reusing run %s: %s", run_id, "; ".join(changed))
    return None
