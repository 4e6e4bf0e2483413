"""Source specs and hub clients, without a network: what is known, and a missing client is a source down."""

import sys

import pytest

from agent import sources
from agent.sources import modelscope, verify
from agent.sources.listing import HubUnreachable, public, unsafe_paths


def test_known_specs():
    for spec in ("t2v-a14b", "hf:Wan-AI/Wan2.2-T2V-A14B-Diffusers@abc", "modelscope:a/b", "local:/x", "synthetic:tiny"):
        assert sources.is_known(spec), spec
    for spec in ("wan-9000", "ftp:x", "hf:", "local:"):
        assert not sources.is_known(spec), spec


def test_a_missing_modelscope_client_is_an_unreachable_source(monkeypatch):
    monkeypatch.setitem(sys.modules, "modelscope_hub", None)  # import fails as if not installed
    with pytest.raises(HubUnreachable, match="its client is not installed.*pip install modelscope"):
        modelscope.list_files("Wan-AI/Wan2.2-T2V-A14B-Diffusers", "master", ["*"])


def test_listed_paths_never_leave_the_repo(tmp_path):
    assert unsafe_paths(["a/b.json", "../x", "/etc/passwd", "a/../../b", "a\\b", ""]) == [
        "../x", "/etc/passwd", "a/../../b", "a\\b", ""
    ]  # fmt: skip
    # forget() removes a cached file and its blob, never a file a link points to outside the repo's folder.
    repo = tmp_path / "models--org--name"
    root = repo / "snapshots" / "abc"
    (repo / "blobs").mkdir(parents=True)
    root.mkdir(parents=True)
    outside = tmp_path / "precious.txt"
    outside.write_text("keep")
    (root / "evil.json").symlink_to(outside)
    (repo / "blobs" / "123").write_text("blob")
    (root / "good.json").symlink_to(repo / "blobs" / "123")
    verify.forget(root, "evil.json")
    verify.forget(root, "../../../precious.txt")
    verify.forget(root, "good.json")
    assert outside.read_text() == "keep" and not (root / "evil.json").exists()
    assert not (repo / "blobs" / "123").exists() and not (root / "good.json").exists()


def test_endpoints_are_recorded_without_credentials():
    assert public("https://user:key@mirror.example:8443/hf?token=abc") == "https://mirror.example:8443/hf"
    assert public("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
