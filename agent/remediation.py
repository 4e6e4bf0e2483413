"""Remediation: a failed trial whose failure matches a playbook rule is tried again with the rule's next change.

Rules are ordered lists of knob changes; attempt k applies changes 1..k on top of the failed rung (later
keys override earlier ones, so memory savers accumulate and alternative backends replace each other).
Each rule is walked once per rung: when its list is exhausted, or no rule matches, the failure stays
recorded and the run moves on. Nothing is retried without end.
"""

from __future__ import annotations

import re

REMEDIABLE = ("failed", "skipped")


def failure_text(record: dict) -> str:
    return f"{record.get('reason', '')}\n{record.get('log_tail', '')}"


def next_fix(record: dict, rules: list[dict]) -> tuple[dict, int] | None:
    """The rule that matches ``record``'s failure and the index of its next untried change, if any."""
    if record.get("verdict") not in REMEDIABLE:
        return None
    text, origin = failure_text(record), record.get("remediation") or {}
    for rule in rules:
        if any(re.search(pattern, text, re.IGNORECASE) for pattern in rule["match"]):
            step = origin["step"] + 1 if origin.get("rule") == rule["name"] else 0
            return (rule, step) if step < len(rule["changes"]) else None
    return None


def derived_rung(record: dict, rule: dict, step: int) -> dict:
    """The rung to try next: the failed one's changes plus the rule's first ``step + 1`` changes."""
    origin = record.get("remediation") or {"rung": record["rung"], "set": record["set"], "gate": record.get("gate")}
    change: dict = {}
    for part in rule["changes"][: step + 1]:
        change |= part
    return {
        "name": f"{origin['rung']}-{rule['name']}-{step + 1}",
        "hypothesis": f"Remediation '{rule['name']}' {step + 1}/{len(rule['changes'])} after: {record['reason']}. "
        f"Trying {change}.",
        "set": origin["set"] | change,
        "gate": origin["gate"] or "fidelity",
        "remediation": {"rule": rule["name"], "step": step, "rung": origin["rung"], "set": origin["set"], "gate": origin["gate"]},
    }
