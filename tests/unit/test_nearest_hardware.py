"""Which known machine is nearest, what the seed rung carries, and the clock-throttle shares of the report."""

from agent import history
from agent.playbook import load
from agent.telemetry import throttle_shares

H100 = {"gpu": "NVIDIA H100 80GB HBM3", "gpus": 1, "memory_GiB": 79.6, "driver_major": "580", "cuda": "13.0",
        "torch": "2.11.0", "diffusers": "0.42.1", "cpu": None}  # fmt: skip


def entry(run_id: str, fingerprint: str, book, **features) -> dict:
    return {"run_id": run_id, "started_at": 1.0, "fingerprint": fingerprint, "features": H100 | features,
            "playbook": book.name, "clip": {k: getattr(book.workload, k) for k in history.SAME_CLIP},
            "model": book.model.source,
            "knobs": book.baseline.model_dump() | {"fp8": "torchao_row", "compile": "regional"}, "generate_s": 10.0}  # fmt: skip


def test_the_same_gpu_model_is_nearer_than_the_same_versions():
    book = load("a14b")
    h200 = entry("b", "h200", book, gpu="NVIDIA H200", memory_GiB=139.8)
    h100_old = entry("a", "h100", book, torch="2.9.1", driver_major="570")
    found = history.nearest([h200, h100_old], "this", H100 | {"memory_GiB": 79.1}, book)
    assert found is not None and found[0]["run_id"] == "a"
    assert found[1] == ["driver major 570 -> 580", "torch 2.9.1 -> 2.11.0", "GPU memory 79.6 -> 79.1 GiB"]
    # A machine with converged runs of its own is known hardware: no seed.
    assert history.nearest([h200, entry("c", "this", book)], "this", H100, book) is None
    # A run of synthetic weights does not stand for the real model's (nor the other way round).
    assert history.nearest([h100_old | {"model": "synthetic:a14b"}], "this", H100, book) is None
    # Another playbook's runs are not comparable work.
    assert history.nearest([entry("d", "x", load("tiny"))], "this", H100, book) is None


def test_the_seed_rung_carries_the_changes_and_the_gate_of_what_it_contains():
    book = load("a14b")
    known = entry("a", "h100", book)
    rung = history.seed_rung(known, ["torch 2.9.1 -> 2.11.0"], book)
    assert rung["set"] == {"fp8": "torchao_row", "compile": "regional"} and rung["gate"] == "fidelity"
    lightning = next(r for r in book.ladder if r.name == "lightning").set
    rung = history.seed_rung(known | {"knobs": known["knobs"] | lightning}, [], book)
    assert rung["gate"] == "reference_free" and rung["set"]["steps"] == 4
    assert history.seed_rung(known | {"knobs": book.baseline.model_dump()}, [], book) is None


def test_throttle_shares_name_the_reasons_held():
    assert throttle_shares([0x4, 0x4 | 0x40, 0, 0]) == {"SW power cap": 0.5, "HW thermal slowdown": 0.25}
    assert throttle_shares([0, 0]) == {} and throttle_shares([]) == {}
