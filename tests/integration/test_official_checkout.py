"""The official code fetched as a git checkout at a pinned commit (agent/provision/official_code.py), against a real
git remote on this machine (file://) holding the official code's files, and the trials told where it is."""

import os
import subprocess

import pytest

from agent import trials
from agent.provision import official_code
from agent.runtime.official.support import CHECKOUT_ENV


def git(folder, *args):
    return subprocess.run(["git", "-C", str(folder), *args], check=True, capture_output=True, text=True).stdout.strip()


def test_the_pinned_commit_is_fetched_once_then_reused(official_remote, tmp_path, monkeypatch):
    url, pinned = official_remote
    monkeypatch.setenv(official_code.REPO_ENV, url)
    monkeypatch.setenv(official_code.COMMIT_ENV, pinned)
    monkeypatch.delenv(CHECKOUT_ENV, raising=False)
    first = official_code.resolve(tmp_path)
    assert first["code_from"] == f"{url} at {pinned[:12]} (fetched)" and "code_error" not in first
    checkout = tmp_path / f"wan2.2-{pinned[:12]}"
    assert first["code"] == str(checkout) and git(checkout, "rev-parse", "HEAD") == pinned
    assert not (checkout / "README.md").exists()  # the pinned commit, not the branch's tip
    assert sorted(p.name for p in tmp_path.iterdir()) == [checkout.name]  # no scratch folder left
    monkeypatch.setenv(official_code.REPO_ENV, "file:///nowhere")  # reused: the remote is not asked again
    assert official_code.resolve(tmp_path)["code_from"].endswith("(reused)")
    # The trials are told where it is; the code they load then says which commit it is (test_official.py).
    environments = {"official": {"python": "/x/python"} | first}
    assert trials.runtime_env(environments, "official") == {CHECKOUT_ENV: str(checkout)}
    assert trials.runtime_env(environments, "diffusers") == {}


def test_a_checkout_that_cannot_be_made_falls_back_to_the_package_and_says_why(official_remote, tmp_path, monkeypatch):
    url, pinned = official_remote
    monkeypatch.delenv(CHECKOUT_ENV, raising=False)
    monkeypatch.setenv(official_code.REPO_ENV, url)
    monkeypatch.setenv(official_code.COMMIT_ENV, "0" * 40)  # a commit the remote does not have
    missing = official_code.resolve(tmp_path)
    assert "code" not in missing and missing["code_from"] == "the wan22 package"
    assert missing["code_error"].startswith(f"{url} at 000000000000: `git fetch` failed: fatal:")
    monkeypatch.setenv(official_code.REPO_ENV, f"file://{tmp_path}/absent")
    monkeypatch.setenv(official_code.COMMIT_ENV, pinned)
    assert "does not appear to be a git repository" in official_code.resolve(tmp_path)["code_error"]
    assert list(tmp_path.iterdir()) == []  # nothing half-made is left to be trusted later
    with pytest.raises(official_code.CheckoutFailed, match="not a full 40-hex-digit id"):
        official_code.checkout(tmp_path, url, "main", 10)
    with pytest.raises(official_code.CheckoutFailed, match="not a repository address"):
        official_code.checkout(tmp_path, "--upload-pack=touch /tmp/x", pinned, 10)
    monkeypatch.setenv(official_code.REPO_ENV, "none")
    assert official_code.resolve(tmp_path) == {"code_from": "the wan22 package (WAN_AGENT_OFFICIAL_REPO=none)"}
    monkeypatch.setenv(CHECKOUT_ENV, "/srv/Wan2.2")
    assert official_code.resolve(tmp_path)["code"] == "/srv/Wan2.2"


def test_a_half_made_checkout_is_made_again(official_remote, tmp_path, monkeypatch):
    url, pinned = official_remote
    target = tmp_path / f"wan2.2-{pinned[:12]}"
    target.mkdir()
    (target / "partial").write_text("cut short")
    path, reused = official_code.checkout(tmp_path, url, pinned, 60)
    assert path == target and not reused and not (target / "partial").exists()
    assert (target / official_code.MODEL_FILE).is_file() and os.listdir(tmp_path) == [target.name]
