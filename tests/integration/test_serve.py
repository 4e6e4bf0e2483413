"""`wan-agent serve` as a client sees it: the real server on loopback (uvicorn, the real engine and GPU worker on the
converged tiny run) driven by the real `openai` SDK; and, without a server, request checking and the job store's
restart behaviour."""

import json
import secrets
import shutil
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from email.message import Message
from pathlib import Path

import openai
import pytest
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

from agent.serve import protocol
from agent.serve.jobs import JobStore, new_id
from agent.serve.protocol import ApiError

pytestmark = pytest.mark.filterwarnings("ignore:The Sora API:DeprecationWarning")

KEY = "sk-test-" + secrets.token_hex(16)
QUEUE_SIZE = 2
POLL_MS = 100
DEFAULTS = {"model": "synthetic:tiny", "width": 64, "height": 48, "frames": 9, "fps": 16, "seed": 42,
            "negative_prompt": "blurry", "steps": 4, "guidance_scale": 1.0, "guidance_scale_2": 1.0, "flow_shift": 5.0,
            "max_prompt_chars": 2000, "max_width": 1280, "max_height": 1280, "max_frames": 241, "max_pixels": 921600,
            "multiple": 16}  # fmt: skip


# Request checking, no server


def test_a_form_request_resolves_against_the_converged_run():
    clip = protocol.parse_create({"prompt": "a cat", "size": "1280x720", "seconds": "4", "seed": "7"}, DEFAULTS)
    assert (clip.width, clip.height, clip.frames, clip.fps, clip.seed) == (1280, 720, 65, 16, 7)
    assert clip.size == "1280x720" and clip.seconds == "4"
    assert clip.steps is None and clip.negative_prompt is None  # the converged run decides
    clip = protocol.parse_create({"prompt": "a cat", "num_frames": 5, "seconds": "8", "num_inference_steps": 2}, DEFAULTS)
    assert (clip.width, clip.height, clip.frames, clip.steps, clip.seconds) == (64, 48, 5, 2, "0.25")
    clip = protocol.parse_create({"prompt": "a cat", "seconds": "3", "fps": "24"}, DEFAULTS)
    assert clip.frames == 73 and clip.seconds == "3"
    assert protocol.parse_create({"prompt": "a cat"}, DEFAULTS).frames == 9


@pytest.mark.parametrize(
    ("fields", "param", "said"),
    [
        ({"size": "100x64"}, "size", "width must be a multiple of 16 (got 100; try 96 or 112)"),
        ({"size": "2048x1280"}, "size", "sizes up to 1280x1280"),
        ({"size": "1280x1280"}, "size", "1638400 pixels; sizes up to 1280x1280 and 921600 pixels (720p)"),
        ({"size": "848x480", "multiple": 32}, "size", "width must be a multiple of 32 (got 848; try 832 or 864)"),
        ({"size": "big"}, "size", "not WIDTHxHEIGHT"),
        ({"num_frames": "10"}, "num_frames", "not 4n+1 (try 9 or 13)"),
        ({"num_frames": "245"}, "num_frames", "241 frames allowed"),
        ({"seconds": "60"}, "seconds", "at most 15 seconds"),
        ({"prompt": "x" * 2001}, "prompt", "2001 characters; at most 2000"),
        ({"prompt": "  "}, "prompt", "prompt is empty"),
        ({"model": "sora-2"}, "model", "serves 'synthetic:tiny'"),
        ({"num_inference_steps": "0"}, "num_inference_steps", "greater than or equal to 1"),
        ({"guidance_scale": "nan"}, "guidance_scale", "guidance_scale"),
        ({"steps": "4"}, "steps", "unknown parameter 'steps'"),
        ({"seed": True}, "seed", "boolean"),
        ({"input_reference[image_url]": "http://x/y.png"}, "input_reference", "text-to-video model"),
    ],
)
def test_a_bad_request_says_what_is_allowed(fields, param, said):
    step = fields.pop("multiple", 16)  # the 5B's VAE and patch: 32
    with pytest.raises(ApiError) as err:
        protocol.parse_create({"prompt": "a cat"} | fields, DEFAULTS | {"multiple": step})
    assert err.value.status == 400 and err.value.param == param and said in err.value.message
    assert set(err.value.body()["error"]) == {"message", "type", "param", "code"}


# The job store, no server


def _job(store: JobStore, **request) -> str:
    job_id = new_id()
    store.add(job_id, {"model": "m", "prompt": "p", "seconds": "0.5", "size": "64x48", "request": request})
    return job_id


def test_progress_never_goes_down_and_a_finished_job_stays_finished(tmp_path):
    store = JobStore(tmp_path)
    job_id = _job(store)
    for progress in (0, 40, 20, 60):
        store.on_event({"job": job_id, "status": "in_progress", "progress": progress})
    assert store.get(job_id)["progress"] == 60
    store.on_event({"job": job_id, "status": "completed", "generate_s": 1.5})
    store.on_event({"job": job_id, "status": "in_progress", "progress": 10})
    job = store.get(job_id)
    assert (job["status"], job["progress"], job["generate_s"]) == ("completed", 100, 1.5)
    assert job["expires_at"] == job["created_at"] + 7 * 24 * 3600
    store.on_event({"job": new_id(), "status": "completed"})  # unknown (deleted) jobs are passed over


def test_a_finished_job_past_its_retention_goes_with_its_video(tmp_path):
    store = JobStore(tmp_path, retention_s=0)
    done, running = _job(store), _job(store)
    store.video_path(done).write_bytes(b"\0\0\0\x18ftypisom")
    store.on_event({"job": done, "status": "completed", "generate_s": 1.0})
    store.on_event({"job": running, "status": "in_progress", "progress": 10})
    later = _job(store)  # adding a job sweeps the expired ones
    assert store.get(done) is None and not store.video_path(done).exists() and not (tmp_path / "jobs" / f"{done}.json").exists()
    assert store.get(running)["status"] == "in_progress" and store.get(later)["status"] == "queued"  # unfinished: kept
    again = JobStore(tmp_path)  # a restart finishes the cut jobs (failed), whose retention (0 s) has passed too
    assert again.get(running) is None and again.get(later) is None and not list((tmp_path / "jobs").iterdir())


def test_a_restart_keeps_finished_videos_and_fails_what_was_cut_short(tmp_path):
    store = JobStore(tmp_path)
    done, running, waiting, failed, dropped = (_job(store) for _ in range(5))
    store.video_path(done).write_bytes(b"\0\0\0\x18ftypisom")
    store.on_event({"job": done, "status": "completed", "generate_s": 2.0})
    store.on_event({"job": running, "status": "in_progress", "progress": 30})
    store.on_event({"job": failed, "status": "failed", "code": "generation_failed", "message": "RuntimeError: boom"})
    store.on_event({"job": dropped, "status": "in_progress", "progress": 5})
    assert store.delete(dropped, generating=True) is False and store.get(dropped) is None  # marked: gone at once

    again = JobStore(tmp_path)
    assert again.get(done)["status"] == "completed" and again.video_path(done).read_bytes()[4:8] == b"ftyp"
    cut = again.get(running)
    assert cut["status"] == "failed" and cut["progress"] == 30 and cut["error"]["code"] == "server_restarted"
    assert "stopped while this video was being generated" in cut["error"]["message"]
    never = again.get(waiting)
    assert never["error"]["code"] == "server_restarted" and "before this video was generated" in never["error"]["message"]
    assert again.get(failed)["error"] == {"code": "generation_failed", "message": "RuntimeError: boom"}
    assert again.get(dropped) is None and not (tmp_path / "jobs" / f"{dropped}.json").exists()
    assert again.counts() == {"queued": 0, "in_progress": 0, "completed": 1, "failed": 3}


def test_pages_follow_creation_order(tmp_path):
    store = JobStore(tmp_path)
    ids = [_job(store) for _ in range(5)]
    first, more = store.page(None, 2, "asc")
    assert [j["id"] for j in first] == ids[:2] and more
    rest, more = store.page(ids[1], 10, "asc")
    assert [j["id"] for j in rest] == ids[2:] and not more
    newest, _ = store.page(None, 2, "desc")
    assert [j["id"] for j in newest] == ids[::-1][:2]
    with pytest.raises(KeyError):
        store.page(new_id(), 2, "asc")


# The real server


@contextmanager
def serving(app) -> Iterator[str]:
    """``app`` under uvicorn on a free loopback port, in a thread; its URL. Stopped (lifespan shut down) on exit."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=60)


def http(method: str, url: str, body: bytes | None = None, headers: dict | None = None) -> tuple[int, Message, bytes]:
    """A bare request (no SDK); the status, the headers (names in any case) and the body."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, answer.headers, answer.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


def wait_ready(url: str, seconds: float) -> dict:
    deadline = time.monotonic() + seconds
    while True:
        status, _, body = http("GET", url + "/health")
        health = json.loads(body)
        if status == 200:
            return health
        assert status == 503 and not health["reason"].startswith("failed"), health
        assert time.monotonic() < deadline, f"not ready after {seconds} s: {health}"
        time.sleep(0.1)


def run_copy(converged, into: Path) -> Path:
    """A copy of the converged run (the engine writes under the run's folder; the original is shared)."""
    _, runs, run_id = converged
    shutil.copytree(runs / run_id, into / run_id, ignore=shutil.ignore_patterns("*.mp4", "*.npy", "*.npz"))
    return into / run_id


@pytest.fixture(scope="module")
def served(converged, tmp_path_factory):
    from agent.serve.app import create_app
    from agent.serve.engine import Engine

    run_dir = run_copy(converged, tmp_path_factory.mktemp("serve-runs"))
    store = JobStore(tmp_path_factory.mktemp("serve-store"))
    engine = Engine(run_dir, store.on_event, queue_size=QUEUE_SIZE)
    with serving(create_app(engine, store, api_key=KEY, poll_after_ms=POLL_MS)) as url:
        wait_ready(url, 300)
        yield {"url": url, "store": store, "engine": engine, "defaults": engine.defaults(), "run_dir": run_dir}


@pytest.fixture(scope="module")
def client(served) -> openai.OpenAI:
    return openai.OpenAI(base_url=served["url"] + "/v1", api_key=KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def made(client) -> openai.types.Video:
    """One video made through create_and_poll with the open-model fields the server takes."""
    return client.videos.create_and_poll(prompt="A red fox in the snow", size="64x48",
                                         extra_body={"num_frames": 5, "seed": 3, "num_inference_steps": 2})  # fmt: skip


def test_create_and_poll_makes_an_mp4(client, made, served):
    assert made.status == "completed" and made.progress == 100 and made.error is None, made
    assert made.id.startswith("video_") and len(made.id) == 6 + 24
    assert (made.object, made.size, made.seconds, made.model) == ("video", "64x48", "0.25", served["defaults"]["model"])
    assert made.created_at <= made.completed_at < made.expires_at
    mp4 = client.videos.download_content(made.id).read()
    assert mp4[4:8] == b"ftyp"
    assert client.videos.retrieve(made.id).model_dump() == made.model_dump()


def test_progress_goes_up_and_a_prompt_is_only_data(client, tmp_path):
    canary = tmp_path / "pwned"
    prompt = f"""a cat's "quote" `touch {canary}` $(touch {canary}); rm -rf {tmp_path} && echo ' | > x.txt * ~ \\ 猫"""
    video = client.videos.create(prompt=prompt, extra_body={"num_frames": 5})
    assert video.status in ("queued", "in_progress") and video.prompt == prompt
    seen, deadline = [], time.monotonic() + 120
    while video.status not in ("completed", "failed"):
        assert time.monotonic() < deadline, f"not done in 120 s: {video}"
        time.sleep(0.02)
        video = client.videos.retrieve(video.id)
        assert video.status in ("queued", "in_progress", "completed", "failed")
        seen.append(video.progress)
    assert video.status == "completed" and video.prompt == prompt, video
    assert seen == sorted(seen) and seen[-1] == 100
    assert tmp_path.is_dir() and not canary.exists()


def test_listing_pages_and_deleting(client, made, served):
    ids = [client.videos.create(prompt=f"clip {n}", extra_body={"num_frames": 1}).id for n in range(2)]
    page = client.videos.list(order="asc", limit=1)
    assert len(page.data) == 1 and page.has_more and page.data[0].created_at <= made.created_at
    after = client.videos.list(order="desc", limit=2)
    assert [v.id for v in after.data] == ids[::-1] and after.has_more and after.last_id == ids[0]
    rest = client.videos.list(order="desc", limit=100, after=after.last_id)
    assert ids[0] not in [v.id for v in rest.data] and made.id in [v.id for v in rest.data] and not rest.has_more
    every = [v.id for v in client.videos.list(order="asc", limit=1)]  # the SDK follows last_id page after page
    assert every[-2:] == ids and made.id in every
    for video_id in ids:  # queued: cancelled; already generating: gone at once, its files when it ends
        deleted = client.videos.delete(video_id)
        assert (deleted.id, deleted.object, deleted.deleted) == (video_id, "video.deleted", True)
        with pytest.raises(openai.NotFoundError):
            client.videos.retrieve(video_id)
    assert all(v.id not in ids for v in client.videos.list(limit=100).data)


def test_deleting_a_finished_video_removes_its_file(client, served):
    video = client.videos.create_and_poll(prompt="a short one", extra_body={"num_frames": 1})
    assert video.status == "completed"
    path = served["store"].video_path(video.id)
    assert path.is_file()
    client.videos.delete(video.id)
    assert not path.exists()
    with pytest.raises(openai.NotFoundError):
        client.videos.download_content(video.id)


def test_bad_input_is_a_bad_request_that_says_what_is_allowed(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.videos.create(prompt="a cat", size="100x64")
    assert "multiple of 16" in err.value.message and err.value.param == "size"
    with pytest.raises(openai.BadRequestError, match="4n"):
        client.videos.create(prompt="a cat", extra_body={"num_frames": 10})
    with pytest.raises(openai.BadRequestError, match="text-to-video"):
        client.videos.create(prompt="a cat", input_reference=("ref.png", b"\x89PNG\r\n\x1a\n", "image/png"))
    with pytest.raises(openai.BadRequestError, match="unknown parameter 'steps'"):
        client.videos.create(prompt="a cat", extra_body={"steps": 4})


def test_keys_ids_and_routes_fail_as_openai_errors(client, served):
    url = served["url"]
    wrong = openai.OpenAI(base_url=url + "/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.videos.list()
    status, _, body = http("GET", url + "/v1/videos")  # no key at all
    assert status == 401 and json.loads(body)["error"]["code"] == "invalid_api_key"
    for video_id in ("video_" + "0" * 24, "../../etc/passwd", "nonsense"):
        with pytest.raises(openai.NotFoundError):
            client.videos.retrieve(video_id)
    for method, path in (("GET", "/v1/nothing"), ("GET", "/nothing"), ("PUT", "/v1/videos")):
        status, _, body = http(method, url + path, headers={"Authorization": f"Bearer {KEY}"})
        assert status in (404, 405) and set(json.loads(body)["error"]) == {"message", "type", "param", "code"}
    status, _, body = http("GET", url + "/v1/videos?limit=many", headers={"Authorization": f"Bearer {KEY}"})
    assert status == 400 and "detail" not in json.loads(body) and json.loads(body)["error"]["param"] == "limit"


def test_json_requests_are_taken_too(served):
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    body = json.dumps({"prompt": "a cat", "size": "64x48", "num_frames": 1}).encode()
    status, answer_headers, answer = http("POST", served["url"] + "/v1/videos", body, headers)
    video = json.loads(answer)
    assert status == 200 and video["object"] == "video" and video["seconds"] == "0" and video["size"] == "64x48"
    assert answer_headers["openai-poll-after-ms"] == str(POLL_MS)
    status, _, answer = http("POST", served["url"] + "/v1/videos", b"[1, 2]", headers)
    assert status == 400 and "object" in json.loads(answer)["error"]["message"]
    http("DELETE", served["url"] + f"/v1/videos/{video['id']}", headers=headers)


def test_a_full_queue_is_a_rate_limit_and_content_waits_for_completion(client):
    made, refused = [], None
    for n in range(QUEUE_SIZE + 3):  # one may be taken by the worker at once; the rest wait
        try:
            made.append(client.videos.create(prompt=f"queued {n}", extra_body={"num_frames": 5}).id)
        except openai.RateLimitError as err:
            refused = err
            break
    assert refused is not None and refused.code == "queue_full" and "queue is full" in refused.message
    with pytest.raises(openai.BadRequestError, match="has no content"):
        client.videos.download_content(made[-1])  # behind the others: not generated yet
    for video_id in made:
        client.videos.delete(video_id)


def test_health_and_metrics(served, made):
    status, _, body = http("GET", served["url"] + "/health")
    health = json.loads(body)
    assert status == 200 and health["status"] == "ready" and health["reason"].startswith("ready")
    status, headers, body = http("GET", served["url"] + "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert "wan_agent_queue_depth" in families and families["wan_agent_ready"].samples[0].value == 1
    by_status = {s.labels["status"]: s.value for s in families["wan_agent_jobs"].samples}
    assert set(by_status) == {"queued", "in_progress", "completed", "failed"} and by_status["completed"] >= 1
    latency = {s.name: s.value for s in families["wan_agent_generation_seconds"].samples if not s.labels.get("le")}
    assert latency["wan_agent_generation_seconds_count"] >= 1 and latency["wan_agent_generation_seconds_sum"] > 0
    if "wan_agent_gpu_power_watts" in families:  # only with NVML
        assert all(s.value > 0 for s in families["wan_agent_gpu_power_watts"].samples)


def test_a_restart_keeps_videos_and_fails_the_job_it_cut_short(client, made, served, converged, tmp_path):
    from agent.serve.app import create_app
    from agent.serve.engine import Engine

    video = client.videos.create(prompt="cut short", extra_body={"num_frames": 9, "num_inference_steps": 30})  # ~3 s
    deadline = time.monotonic() + 60
    while (video := client.videos.retrieve(video.id)).status == "queued":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    # What a server killed now leaves on disk: the store's folder as it is while the job generates.
    shutil.copytree(served["store"].folder, tmp_path / "store")
    assert json.loads((tmp_path / "store" / "jobs" / f"{video.id}.json").read_text())["status"] == "in_progress"

    store = JobStore(tmp_path / "store")
    engine = Engine(run_copy(converged, tmp_path / "runs"), store.on_event)
    with serving(create_app(engine, store, api_key=KEY, poll_after_ms=POLL_MS)) as url:
        again = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
        assert again.videos.download_content(made.id).read()[4:8] == b"ftyp"
        cut = again.videos.retrieve(video.id)
        assert cut.status == "failed" and cut.error.code == "server_restarted"
        assert "stopped while this video was being generated" in cut.error.message
        with pytest.raises(openai.BadRequestError, match="failed"):
            again.videos.download_content(video.id)
