"""Memory across runs on real tiny runs: `rebench` judged against the previous best of this hardware (verdict file,
exit status, webhook on loopback, the secret URL nowhere), and a run on new hardware that starts from the nearest
known machine's best; the index beside the runs."""

import json
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.conftest import rewrite_events, wan_agent

SECRET = "T0KEN-in-the-path-3f9c"


@pytest.fixture
def earlier(converged, tmp_path):
    """The converged tiny run, alone in a runs folder of its own, and its playbook."""
    base, runs, run_id = converged
    mine = tmp_path / "runs"
    shutil.copytree(runs / run_id, mine / run_id, ignore=shutil.ignore_patterns("*.mp4", "*.npy", "*.npz", "inductor-cache"))
    return mine, run_id, base / "tiny-test.yaml"


@pytest.fixture
def webhook():
    """A loopback HTTP server that keeps what is POSTed to it."""
    received: list[tuple[str, dict]] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.path, json.loads(body)))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/hooks/{SECRET}", received
    server.shutdown()


def test_rebench_names_a_regression_against_the_previous_best_and_posts_it(earlier, webhook, tmp_path):
    runs, previous, book = earlier
    url, received = webhook
    # The earlier run made ten times faster: the new run of the same machine must come out a regression.
    rewrite_events(runs / previous, lambda e: e | ({"samples_s": [s / 10 for s in e["samples_s"]],
                   "generate_s": e["generate_s"] / 10} if e["kind"] == "decision" and e.get("samples_s") else {}))  # fmt: skip
    url_file = tmp_path / "hook-url"
    url_file.write_text(url + "\n")
    done = wan_agent("rebench", "--playbook", str(book), "--webhook-url-file", str(url_file), runs_dir=runs)
    assert done.returncode == 1, done.stderr
    run_id = done.stdout.strip()
    latest = json.loads((runs / "rebench-latest.json").read_text())
    assert latest["run_id"] == run_id and latest["previous"] == previous and latest["verdict"] == "regression"
    assert "converged clip" in latest["regressions"] and latest["converged"]["ratio"] > 5
    assert latest["webhook"] == {"to": f"{url.split('/hooks')[0]}/…", "status": 204}
    [(path, posted)] = received
    assert path == f"/hooks/{SECRET}" and posted == {k: v for k, v in latest.items() if k != "webhook"}
    journal = (runs / run_id / "journal.md").read_text()
    assert "## Against the previous best of this hardware" in journal and "**Regression** beyond noise" in journal
    assert 'id="comparison"' in (runs / run_id / "report.html").read_text()
    index = json.loads((runs / "index.json").read_text())["runs"]
    assert [e["run_id"] for e in index] == [run_id, previous] and index[0]["knobs"]["lightning"] is True
    written = [p for p in (runs / run_id).rglob("*") if p.suffix in (".log", ".json", ".jsonl", ".md", ".html")]
    for text in (done.stdout, done.stderr, (runs / "rebench-latest.json").read_text(), *(p.read_text() for p in written)):
        assert SECRET not in text


def test_new_hardware_starts_from_the_nearest_known_best(earlier):
    runs, known, book = earlier
    # The earlier run as if measured on an H100: to this CPU machine, the nearest (only) known hardware.
    record = json.loads((runs / known / "run.json").read_text())
    record["hardware"] |= {"fingerprint": "0ther0machine", "gpus": [{"name": "NVIDIA H100 80GB HBM3", "memory_GiB": 79.6,
                           "driver": "580.159.04", "compute_capability": "9.0"}], "torch_cuda": "13.0"}  # fmt: skip
    (runs / known / "run.json").write_text(json.dumps(record))
    done = wan_agent("run", "--playbook", str(book), runs_dir=runs)
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in (runs / done.stdout.strip() / "journal.jsonl").read_text().splitlines()]
    started = next(e for e in events if e["kind"] == "run_started")["start_from"]
    assert started["run_id"] == known and "gpu None -> NVIDIA H100 80GB HBM3" not in started["differs"]
    assert "gpu NVIDIA H100 80GB HBM3 -> None" in started["differs"] and started["set"]["lightning"] is True
    trials = [e["trial"] for e in events if e["kind"] == "trial_planned"]
    assert trials[:2] == ["00-baseline", "01-known-best"]
    decided = {e["rung"]: e["verdict"] for e in events if e["kind"] == "decision"}
    assert decided["known-best"] == "kept"
    skipped = {e["rung"]: e["reason"] for e in events if e["kind"] == "rung_skipped"}
    assert skipped["lightning"] == "changes nothing on top of the current best"
    journal = (runs / done.stdout.strip() / "journal.md").read_text()
    assert f"starts from the best configuration of run `{known}`" in journal
    # Not compared: the earlier run is other hardware.
    assert "Against the previous best" not in journal


def test_rebench_config_errors_are_named(tmp_path):
    config = tmp_path / "rebench-x.yaml"
    config.write_text("playbook: nosuch-playbook\nwebhok_url: http://x\n")
    done = wan_agent("rebench", "--config", str(config), runs_dir=tmp_path / "runs")
    assert done.returncode == 2 and "webhok_url" in done.stderr and "keys: name, playbook" in done.stderr
    config.write_text(f"playbook: nosuch-playbook\nruns_dir: {tmp_path / 'runs'}\n")
    done = wan_agent("rebench", "--config", str(config), runs_dir=tmp_path / "elsewhere")
    assert done.returncode == 2 and "nosuch-playbook" in done.stderr
    latest = json.loads((tmp_path / "runs" / "rebench-latest.json").read_text())  # a run that cannot start: said so
    assert latest["verdict"] == "run failed" and latest["run_id"] is None and "nosuch-playbook" in latest["error"]
