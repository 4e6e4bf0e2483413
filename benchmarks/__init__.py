"""Scripts that produce the figures in docs/benchmarks.md (benchmarks/README.md); helpers they share."""

from __future__ import annotations


def baseline_trial(name: str, model: str, playbook_name: str, device: str, measurement):
    """A trial of ``synthetic:MODEL`` at a playbook's workload and baseline knobs (output under /tmp/NAME)."""
    from agent import playbook
    from agent.runtime.config import Knobs, TrialConfig

    book = playbook.load(playbook_name)
    return TrialConfig(
        name=name,
        model_path=f"synthetic:{model}",
        device=device,
        output_dir=f"/tmp/{name}",
        workload=book.workload,
        knobs=Knobs(**book.baseline.model_dump()),
        measurement=measurement,
    )


def about(config, model: str) -> dict:
    """What every figure is written beside: the machine, the versions, the model and the trial's settings."""
    from agent import hardware

    return {
        "hardware": hardware.probe(),
        "versions": hardware.versions(),
        "model": model,
        "workload": config.workload.model_dump(),
        "knobs": config.knobs.model_dump(),
    }
