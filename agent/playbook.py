"""Playbooks: declarative, validated knowledge of one deployment (model, workload, baseline, ladder).

Loaded from ``playbooks/NAME.yaml`` or a path. Any mistake is a ``PlaybookError`` whose message names
each bad field and what is allowed; the CLI turns it into exit status 2.
"""

from __future__ import annotations

import os
import re
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from agent import sources, variants
from agent.runtime.config import Knobs, Measurement, Strict, Workload

PLAYBOOK_DIR = Path(os.environ.get("WAN_AGENT_PLAYBOOKS", Path(__file__).resolve().parent.parent / "playbooks"))


MIN_SAMPLES = 3  # the fewest timed repeats whose median one outlier cannot move


class PlaybookError(ValueError):
    """A playbook that cannot be used; ``str()`` is the message for the user."""


class ModelSpec(Strict):
    source: str  # a variant name (playbooks/variants.yaml), hf:REPO[@REV], modelscope:REPO[@REV], local:PATH, synthetic:NAME
    seed: int = Field(default=0, ge=0)  # weights of a synthetic model

    @field_validator("source")
    @classmethod
    def _known_source(cls, value: str) -> str:
        if not sources.is_known(value):
            raise ValueError(
                f"{value!r} is not a known source; use a variant ({', '.join(variants.load())}) or one of "
                f"{', '.join(s + ':...' for s in sources.SCHEMES)}"
            )
        return value


class Rung(Strict):
    """One step of the ladder: a change to the current best, and why it should help."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,40}$")
    hypothesis: str = Field(min_length=1)
    set: dict[str, Any] = Field(min_length=1)
    # fidelity: the rung must compute the same function (FP8, compile, attention): its transformer output on a
    # fixed input must match the baseline's. reference_free: a distilled rung (Lightning) is judged on its own output.
    gate: Literal["fidelity", "reference_free"] = "fidelity"


class Remedy(Strict):
    """A failure signature (regexes over the failure's reason and log tail) and the changes to try, in order.
    A change is knobs, or ``workload: {height, width, frames}``: a last resort that changes the work itself,
    so the trial it makes is recorded as a changed workload, never as a speed-up."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,40}$")
    match: list[str] = Field(min_length=1)
    changes: list[dict[str, Any]] = Field(min_length=1)

    @field_validator("match")
    @classmethod
    def _regexes(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as err:
                raise ValueError(f"{pattern!r} is not a regular expression: {err}") from None
        return patterns


class Timeouts(Strict):
    deadline_s: float = Field(default=1800, gt=0)  # whole trial, from session start
    idle_timeout_s: float = Field(default=300, gt=0)  # no output for this long means a hang


class BusyGpu(Strict):
    """Another process on the GPU before a trial: wait this long for it to go, then refuse (stop the run,
    resume later) or run anyway with every figure of the trial flagged as measured on a shared GPU."""

    wait_s: float = Field(default=600, ge=0)
    then: Literal["refuse", "flag"] = "refuse"


class Limits(Strict):
    """Caps every trial runs under: a share of the GPU's memory (as on a smaller card), or an address-space
    limit on the worker (RLIMIT_AS), where an allocation past it fails as out-of-memory."""

    gpu_memory_fraction: float | None = Field(default=None, gt=0, le=1)
    host_memory_GiB: float | None = Field(default=None, gt=0)


class Decision(Strict):
    min_gain: float = Field(default=0.02, ge=0, lt=1)  # a rung must also beat the best by this fraction
    # Same-function rungs stay within this many times the reference's measured numerical noise (agent/gates.py).
    noise_multiple: float = Field(default=3.0, gt=1)
    # What a precision trade (FP8, FP4, a lower precision, quantized attention) may cost in relative error of the
    # experts' output. FP8 lands at 2-5 % on the A14B (docs/benchmarks.md); beyond 10 % it computes something else.
    max_relative_error: float = Field(default=0.1, gt=0)
    # What an approximate VAE decode (tiling) may cost: PSNR of its decoded check frame against the reference's.
    min_psnr_dB: float = Field(default=35.0, gt=0)


class Playbook(Strict):
    # Part of every run id (runs.RUN_ID): short, and never a path.
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*$", max_length=64)
    description: str = ""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    model: ModelSpec
    workload: Workload
    baseline: Knobs
    ladder: list[Rung] = Field(min_length=1)
    measurement: Measurement = Measurement()
    timeouts: Timeouts = Timeouts()
    busy_gpu: BusyGpu = BusyGpu()
    limits: Limits = Limits()
    decision: Decision = Decision()
    remediation: list[Remedy] = []

    @model_validator(mode="after")
    def _rungs_apply(self) -> Playbook:
        seen: set[str] = set()
        knobs = self.baseline.model_dump()
        for i, rung in enumerate(self.ladder):
            if rung.name in seen or rung.name == "baseline":
                raise ValueError(f"ladder.{i}.name: {rung.name!r} is used twice (or is 'baseline'); give each rung its own name")
            seen.add(rung.name)
            knobs |= rung.set
            _check_knobs(knobs, f"ladder.{i}.set")
        for i, remedy in enumerate(self.remediation):
            for j, change in enumerate(remedy.changes):
                where = f"remediation.{i}.changes.{j}"
                knobs = {k: v for k, v in change.items() if k != "workload"}
                _check_knobs(self.baseline.model_dump() | knobs, where, knobs)
                if "workload" in change:
                    _check_workload(self.workload, change["workload"], f"{where}.workload")
        return self


SMALLER_WORKLOAD_KEYS = ("height", "width", "frames")


def _check_workload(workload: Workload, change: Any, where: str) -> None:
    if not isinstance(change, dict) or not change or set(change) - set(SMALLER_WORKLOAD_KEYS):
        raise ValueError(f"{where}: give some of {', '.join(SMALLER_WORKLOAD_KEYS)} (a smaller size to fall back to)")
    try:
        Workload.model_validate(workload.model_dump() | change)
    except ValidationError as err:
        raise ValueError(f"{where}: {_format_errors(err, Workload)}") from None


def _check_knobs(knobs: dict, where: str, change: dict | None = None) -> None:
    unknown = sorted(set(change if change is not None else knobs) - set(Knobs.model_fields))
    if unknown:
        raise ValueError(f"{where}: unknown knob {', '.join(unknown)}; allowed: {', '.join(Knobs.model_fields)}")
    try:
        Knobs.model_validate(knobs)
    except ValidationError as err:
        raise ValueError(f"{where}: {_format_errors(err, Knobs)}") from None


def _allowed_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """The fields of the model found at ``loc`` (for 'unknown key' messages)."""
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            return []
        candidates = [field.annotation, *typing.get_args(field.annotation)]
        nested = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
        if not nested:
            return []
        model = nested[0]
    return list(model.model_fields)


def _format_errors(err: ValidationError, model: type[BaseModel]) -> str:
    lines = []
    for e in err.errors():
        message = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            message = f"unknown key; allowed here: {', '.join(_allowed_keys(model, e['loc']))}"
        elif e["type"] == "missing":
            message = "required, but missing"
        elif e["type"] != "value_error":  # our own messages already say what was given
            message += f" (got {e['input']!r})"
        lines.append(f"{'.'.join(str(p) for p in e['loc'])}: {message}" if e["loc"] else message)
    return "; ".join(lines) if len(lines) == 1 else "\n  " + "\n  ".join(lines)


NOT_PLAYBOOKS = ("variants",)  # playbooks/variants.yaml is the variant registry (agent/variants.py)


def names() -> list[str]:
    return sorted(p.stem for p in PLAYBOOK_DIR.glob("*.yaml") if p.stem not in NOT_PLAYBOOKS)


def find(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    return PLAYBOOK_DIR / f"{name_or_path}.yaml"


def load(name_or_path: str) -> Playbook:
    path = find(name_or_path)
    if path.stem in NOT_PLAYBOOKS and path.parent.resolve() == PLAYBOOK_DIR.resolve():
        raise PlaybookError(f"{path} is the variant registry, not a playbook; playbooks: {', '.join(names())}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        known = ", ".join(names())
        raise PlaybookError(f"playbook {name_or_path!r} not found ({path}); known: {known}") from None
    except yaml.YAMLError as err:
        raise PlaybookError(f"playbook {path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise PlaybookError(f"playbook {path}: expected a mapping of keys (name, model, workload, baseline, ladder, ...)")
    return validate(data, str(path))


def validate(data: dict, origin: str = "playbook") -> Playbook:
    """A playbook as a user wrote it. Stricter than the model, which also reloads the playbooks of runs started
    under older rules (resume must still work for them)."""
    try:
        book = Playbook.model_validate(data)
    except ValidationError as err:
        raise PlaybookError(f"playbook {origin} is invalid: {_format_errors(err, Playbook)}") from None
    for name in ("repeats", "probe_steps", "fewest"):
        value = getattr(book.measurement, name)
        if value < MIN_SAMPLES:
            raise PlaybookError(
                f"playbook {origin} is invalid: measurement.{name}: {value} is too few; a median of fewer than "
                f"{MIN_SAMPLES} repeats is their mean, which one outlier moves: use {MIN_SAMPLES} or more"
            )
    return book
