"""Source specs and hub clients, without a network: what is known, and a missing client is a source down."""

import sys

import pytest

from agent import sources
from agent.sources import modelscope
from agent.sources.listing import HubUnreachable


def test_known_specs():
    for spec in ("t2v-a14b", "hf:Wan-AI/Wan2.2-T2V-A14B-Diffusers@abc", "modelscope:a/b", "local:/x", "synthetic:tiny"):
        assert sources.is_known(spec), spec
    for spec in ("wan-9000", "ftp:x", "hf:", "local:"):
        assert not sources.is_known(spec), spec


def test_a_missing_modelscope_client_is_an_unreachable_source(monkeypatch):
    monkeypatch.setitem(sys.modules, "modelscope_hub", None)  # import fails as if not installed
    with pytest.raises(HubUnreachable, match="its client is not installed.*pip install modelscope"):
        modelscope.list_files("Wan-AI/Wan2.2-T2V-A14B-Diffusers", "master", ["*"])
