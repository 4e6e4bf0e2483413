"""Downloads through the real huggingface_hub and modelscope clients, against the fake hub on loopback
(tests/fakehub.py): a full fetch, a kill -9 half-way and the resume, corruption, a disk too small, the Hub
down with ModelScope serving, offline with a full cache, and nothing reachable at all."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from agent import variants
from agent.sources import hub as hf
from agent.sources import modelscope
from tests.conftest import ROOT, WAN_AGENT, hub_env, small_playbook, wan_agent, write_playbook
from tests.fakehub import LIGHTNING_REPO, T2V_REPO, Stall

VARIANT = variants.get("t2v-a14b")
SHARD = "transformer/diffusion_pytorch_model-00003-of-00014.safetensors"


def fetch(tmp_path: Path, hub, *more: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return wan_agent("fetch", "t2v-a14b", "--cache", str(tmp_path / "cache"), *more, runs_dir=tmp_path, env=env or hub_env(hub))


def test_a_variant_is_fetched_verified_and_recorded(hub, tmp_path):
    token = "hf_canary" + os.urandom(8).hex()
    done = fetch(tmp_path, hub, env=hub_env(hub, HF_TOKEN=token, MODELSCOPE_API_TOKEN=token))
    assert done.returncode == 0, done.stderr
    model, high, low = done.stdout.split()
    snapshot = hf.repo_folder(tmp_path / "cache", T2V_REPO) / "snapshots" / VARIANT.hub.revision
    assert Path(model) == snapshot and (snapshot / "model_index.json").is_file()
    assert high.endswith(f"{VARIANT.lightning.subfolder}/high_noise_model.safetensors") and Path(low).is_file()
    # Only what the registry allows: no README or assets, no other Lightning version.
    fetched = set(hub.downloads("hf"))
    assert "README.md" not in fetched and "assets/logo.png" not in fetched
    assert not any("Seko-V1/" in path for path in fetched)
    assert {"vae/config.json", "text_encoder/model.safetensors.index.json", SHARD} <= fetched
    record = json.loads(next((tmp_path / "cache" / "verified" / "huggingface").glob("Wan-AI--*.json")).read_text())
    assert len(record["files"]) == len(record["listing"]["files"]) > 30
    assert "verified" in done.stderr and "GB" in done.stderr  # progress and summary on stderr
    assert f"Bearer {token}" in hub.authorizations, "the token was not used"
    for path in (tmp_path / "cache").rglob("*"):
        assert not path.is_file() or token.encode() not in path.read_bytes(), path
    assert token not in done.stderr + done.stdout
    # A second fetch finds everything verified in place and downloads nothing.
    hub.requests.clear()
    again = fetch(tmp_path, hub)
    assert again.returncode == 0 and again.stdout == done.stdout
    assert hub.downloads("hf") == []


def kill_9_mid_file(hub, tmp_path: Path) -> None:
    """Start `wan-agent fetch`, let the hub send part of SHARD, then kill -9 the fetch."""
    hub.stall = Stall(SHARD, after=100_000)
    agent = subprocess.Popen(
        [*WAN_AGENT, "--runs-dir", str(tmp_path), "fetch", "t2v-a14b", "--cache", str(tmp_path / "cache")],
        cwd=ROOT, env=hub_env(hub), stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    try:
        assert hub.stall.reached.wait(120), "the download never reached the stalled file"
        time.sleep(0.5)  # let the client write what it received
        os.killpg(agent.pid, signal.SIGKILL)
        agent.wait(30)
    finally:
        if agent.poll() is None:
            os.killpg(agent.pid, signal.SIGKILL)
    hub.stall.release.set()
    hub.stall = None


def test_a_fetch_killed_half_way_resumes_and_never_trusts_the_half_file(hub, tmp_path):
    kill_9_mid_file(hub, tmp_path)
    folder = hf.repo_folder(tmp_path / "cache", T2V_REPO)
    snapshot = folder / "snapshots" / VARIANT.hub.revision
    assert not (snapshot / SHARD).exists(), "a half file is under the name a run would trust"
    assert list((folder / "blobs").glob("*.incomplete")), "huggingface_hub keeps the partial bytes under a temp name"
    whole_before = {p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file()}
    hub.requests.clear()
    done = fetch(tmp_path, hub)
    assert done.returncode == 0, done.stderr
    again = set(hub.downloads("hf"))
    assert SHARD in again and not (whole_before & again), "files finished before the kill were fetched again"
    assert not list((folder / "blobs").glob("*.incomplete")), "the killed download's partial file was left taking space"
    assert "left by a download that was killed" in done.stderr


def test_modelscope_resumes_a_file_cut_by_kill_9_from_its_bytes(hub, tmp_path):
    hub.down.add("hf")
    kill_9_mid_file(hub, tmp_path)
    folder = modelscope.repo_folder(tmp_path / "cache", T2V_REPO)
    (partial,) = [p for p in folder.rglob("*.incomplete") if p.name.startswith(Path(SHARD).name)]
    kept = partial.stat().st_size
    assert 0 < kept < (hub.repos[T2V_REPO].root / SHARD).stat().st_size
    assert not (folder / "snapshots" / "master" / SHARD).exists(), "a half file is under the name a run would trust"
    hub.requests.clear()
    done = fetch(tmp_path, hub)
    assert done.returncode == 0, done.stderr
    assert ("ms", "RANGE", f"{SHARD}@{kept}") in hub.requests, "the cut file was fetched from zero, not resumed"
    assert not list(folder.rglob("*.incomplete"))


def test_a_corrupted_file_is_fetched_again_once_then_refused(hub, tmp_path):
    hub.corrupt[SHARD] = 1
    done = fetch(tmp_path, hub)
    assert done.returncode == 0, done.stderr
    assert hub.downloads("hf").count(SHARD) == 2 and "failed verification" in done.stderr
    hub.requests.clear()
    hub.corrupt[SHARD] = 2
    other = tmp_path / "other"
    done = wan_agent("fetch", "t2v-a14b", "--cache", str(other), runs_dir=tmp_path, env=hub_env(hub))
    assert done.returncode == 1
    assert SHARD in done.stderr and "corrupted twice" in done.stderr and "sha256" in done.stderr
    snapshot = hf.repo_folder(other, T2V_REPO) / "snapshots" / VARIANT.hub.revision
    assert not (snapshot / SHARD).exists(), "a file that failed verification was left where a run would load it"


def test_a_disk_too_small_is_refused_before_a_byte_is_fetched(hub, tmp_path):
    import shutil

    free_GB = shutil.disk_usage(tmp_path).free / 1e9
    done = fetch(tmp_path, hub, env=hub_env(hub, WAN_AGENT_DISK_MARGIN_GB=str(free_GB + 1)))
    assert done.returncode == 1
    assert hub.downloads("hf") == [] and hub.downloads("ms") == []
    for needle in ("need", "free on the filesystem", "--cache DIR or WAN_AGENT_CACHE", "Nothing was downloaded"):
        assert needle in done.stderr, needle


def test_the_hub_down_means_modelscope_serves_and_the_journal_says_so(hub, tmp_path):
    hub.down.add("hf")
    book = small_playbook(model={"source": "t2v-a14b", "seed": 0})
    book["ladder"] = [r for r in book["ladder"] if r["name"] == "lightning"]
    done = wan_agent(
        "run", "--playbook", str(write_playbook(tmp_path / "b.yaml", book)), runs_dir=tmp_path / "runs",
        env=hub_env(hub, WAN_AGENT_CACHE=str(tmp_path / "cache")),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert hub.downloads("hf") == [] and SHARD in hub.downloads("ms")
    run_dir = tmp_path / "runs" / done.stdout.strip()
    model = json.loads((run_dir / "run.json").read_text())["model"]
    assert model["weights"] == "real" and [d["hub"] for d in model["downloads"]] == ["modelscope", "modelscope"]
    assert "503" in model["downloads"][0]["tried_before"][0]
    journal = (run_dir / "journal.md").read_text()
    assert f"`{T2V_REPO}` @ `master` from modelscope" in journal and "tried first: huggingface" in journal
    assert "Real Wan2.2 weights (`t2v-a14b`)" in journal


def test_a_hub_that_never_answers_times_out_and_modelscope_serves(hub, tmp_path):
    hub.silent.add("hf")
    start = time.monotonic()
    done = fetch(tmp_path, hub, env=hub_env(hub, WAN_AGENT_HUB_TIMEOUT_S="2"))
    assert done.returncode == 0, done.stderr
    assert "Timeout" in done.stderr and SHARD in hub.downloads("ms")
    assert time.monotonic() - start < 60


def test_offline_with_a_full_cache_needs_no_network(hub, tmp_path):
    assert fetch(tmp_path, hub).returncode == 0
    hub.down.update({"hf", "ms"})
    hub.requests.clear()
    done = fetch(tmp_path, hub, env=hub_env(hub, HF_HUB_OFFLINE="1"))
    assert done.returncode == 0, done.stderr
    assert hub.requests == [] and Path(done.stdout.split()[0], "model_index.json").is_file()
    # Not offline, but no hub answers: the verified copy is used, and the run says so.
    done = fetch(tmp_path, hub)
    assert done.returncode == 0 and "using the copy verified earlier" in done.stderr
    # Offline with an empty cache: a clear error naming the ways on, before anything is tried.
    offline = hub_env(hub, HF_HUB_OFFLINE="1")
    done = wan_agent("fetch", "t2v-a14b", "--cache", str(tmp_path / "empty"), runs_dir=tmp_path, env=offline)
    assert done.returncode == 1 and "offline (HF_HUB_OFFLINE=1)" in done.stderr and "wan-agent fetch t2v-a14b" in done.stderr


def test_nothing_reachable_stops_the_run_before_any_trial(hub, tmp_path):
    hub.down.update({"hf", "ms"})
    book = write_playbook(tmp_path / "b.yaml", small_playbook(model={"source": "t2v-a14b", "seed": 0}))
    done = wan_agent(
        "run", "--playbook", str(book), runs_dir=tmp_path / "runs", env=hub_env(hub, WAN_AGENT_CACHE=str(tmp_path / "c"))
    )
    assert done.returncode == 1
    for needle in ("no trial was run", "huggingface (", "modelscope (", "HF_ENDPOINT", "local:PATH", "--synthetic", "resume"):
        assert needle in done.stderr, needle
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert not list(run_dir.glob("trials/*"))


@pytest.mark.parametrize("spec", ["hf:Wan-AI/Wan2.2-T2V-A14B-Diffusers", f"modelscope:{T2V_REPO}"])
def test_a_hub_source_fetches_from_that_hub_only(hub, tmp_path, spec):
    done = wan_agent("fetch", spec, "--cache", str(tmp_path / "cache"), runs_dir=tmp_path, env=hub_env(hub))
    assert done.returncode == 0, done.stderr
    used = "hf" if spec.startswith("hf:") else "ms"
    assert hub.downloads(used) and not hub.downloads({"hf": "ms", "ms": "hf"}[used])
    assert len(done.stdout.split()) == 3  # the registry knows the repo: its Lightning pair comes with it
    assert LIGHTNING_REPO.split("/")[1] in done.stdout
