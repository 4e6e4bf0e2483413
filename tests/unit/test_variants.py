"""The variant registry: valid as shipped, and which variant fits which machine, with the reasons."""

import pytest

from agent import cli, playbook, sources, variants
from agent.sources import synthetic

H100 = {"name": "NVIDIA H100 80GB HBM3", "memory_GiB": 79.6, "compute_capability": "9.0"}


def machine(gpu: dict | None, ram_GiB: float = 1000) -> dict:
    return {"gpus": [gpu] if gpu else [], "ram_GiB": ram_GiB}


def test_the_shipped_registry_is_valid_and_points_at_what_exists():
    known = variants.load()
    assert {"t2v-a14b", "ti2v-5b", "i2v-a14b"} <= set(known)
    for variant in known.values():
        if variant.playbook and not variant.unsupported:
            assert variant.playbook in playbook.names(), variant.name
        if variant.synthetic and not variant.unsupported:
            assert variant.synthetic in synthetic.PRESETS, variant.name
        assert len(variant.hub.revision) == 40 or variant.hub.revision == "main", variant.name
    a14b = known["t2v-a14b"]
    assert a14b.hub.repo == "Wan-AI/Wan2.2-T2V-A14B-Diffusers" and a14b.lightning is not None
    assert a14b.lightning.subfolder == "Wan2.2-T2V-A14B-4steps-lora-rank64-Seko-V1.1"


def test_a14b_is_chosen_on_an_80_GB_gpu_and_the_others_say_why_not():
    chosen, reasons = variants.fit(machine(H100))
    assert chosen is not None and chosen.name == "t2v-a14b"
    assert any(r.startswith("t2v-a14b-nvfp4: NVFP4 kernels need Blackwell") for r in reasons)
    name, because = cli.pick_playbook(machine(H100))
    assert name == "a14b" and "t2v-a14b fits NVIDIA H100" in because


def test_old_or_small_gpus_are_refused_with_the_reason():
    turing = {"name": "T4", "memory_GiB": 15.6, "compute_capability": "7.5"}
    chosen, reasons = variants.fit(machine(turing))
    assert chosen is None and "t2v-a14b: needs compute capability 8.0, the GPU has 7.5" in reasons
    with pytest.raises(cli.runs.RunError, match="no Wan2.2 variant fits this GPU"):
        cli.pick_playbook(machine(turing))


def test_the_5b_is_chosen_where_the_a14b_does_not_fit():
    l40s = {"name": "NVIDIA L40S", "memory_GiB": 44.4, "compute_capability": "8.9"}
    chosen, reasons = variants.fit(machine(l40s, ram_GiB=64))
    assert chosen is not None and chosen.name == "ti2v-5b"
    assert "t2v-a14b: offloading it needs 126 GB of host memory; this machine has 69 GB" in reasons
    assert cli.pick_playbook(machine(l40s))[0] == "5b"
    rtx4090 = {"name": "RTX 4090", "memory_GiB": 23.6, "compute_capability": "8.9"}
    chosen, reasons = variants.fit(machine(rtx4090, ram_GiB=128))
    assert chosen is not None and chosen.name == "ti2v-5b"  # offloaded, as the model card runs it on 24 GB
    assert "t2v-a14b: would need offload on 25 GB; ti2v-5b is preferred" in reasons


def test_without_a_gpu_the_tiny_synthetic_playbook_runs():
    assert variants.fit(machine(None))[0] is None
    assert cli.pick_playbook(machine(None))[0] == "tiny"


def test_synthetic_twins_benchmark_without_downloading():
    assert sources.synthetic_twin("t2v-a14b") == "synthetic:a14b"
    assert sources.synthetic_twin("hf:Wan-AI/Wan2.2-T2V-A14B-Diffusers@abc") == "synthetic:a14b"
    assert sources.synthetic_twin("synthetic:tiny") == "synthetic:tiny"
    with pytest.raises(sources.SourceError, match="no synthetic twin"):
        sources.synthetic_twin("hf:someone/other-model")
    assert sources.synthetic_twin("ti2v-5b") == "synthetic:5b"
    book = cli._source(playbook.load("a14b"), "synthetic")
    assert book.model.source == "synthetic:a14b" and book.ladder == playbook.load("a14b").ladder
    assert sources.weights_of(book.model.source) == "synthetic" and sources.weights_of("t2v-a14b") == "real"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda v: v["t2v-a14b"]["hub"].update(repo="not a repo"), "variants.t2v-a14b.hub.repo"),
        (lambda v: v["t2v-a14b"].update(colour="red"), "variants.t2v-a14b.colour: Extra inputs are not permitted"),
        (lambda v: v["t2v-a14b"].update(files=["../../etc/passwd"]), "never leave it"),
        (lambda v: v["t2v-a14b"].update(task="v2v"), "variants.t2v-a14b.task"),
    ],
)
def test_a_malformed_registry_names_the_field(tmp_path, edit, message):
    import yaml

    data = yaml.safe_load(variants.REGISTRY.read_text())
    edit(data["variants"])
    path = tmp_path / "variants.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(variants.VariantError, match="invalid") as err:
        variants.load(path)
    assert message in str(err.value)
