"""report.html in a real browser (the system's Chromium, driven by Playwright): the converged tiny run's own page,
a run with a failed and a skipped trial, and a run still in progress. Each page must load from disk with no console
error and no request beyond itself, and every chart and frame sheet must render; screenshots go to test-artifacts/."""

import shutil

import pytest
from playwright.sync_api import sync_playwright

from tests.conftest import ROOT, rewrite_events, wan_agent

ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = shutil.which("chromium")


@pytest.fixture(scope="module")
def browser():
    assert CHROMIUM, "the report's tests need Chromium: apt-get install chromium (start_wan.sh --dev does)"
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


def open_page(browser, path, shot: str) -> tuple[object, dict]:
    """The page at ``path``, what went wrong loading it, and each image's rendered size."""
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    seen: dict = {"errors": [], "requests": [], "failed": [], "dialogs": []}
    page.on("console", lambda m: seen["errors"].append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: seen["errors"].append(str(e)))
    page.on("request", lambda r: seen["requests"].append(r.url))
    page.on("requestfailed", lambda r: seen["failed"].append(r.url))
    page.on("dialog", lambda d: (seen["dialogs"].append(d.message), d.dismiss()))
    page.goto(path.as_uri())
    page.wait_for_load_state("load")
    seen["images"] = page.eval_on_selector_all(
        "img", "els => els.map(e => ({alt: e.alt, w: e.naturalWidth, h: e.getBoundingClientRect().height, ok: e.complete}))"
    )
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / shot), full_page=True)
    return page, seen


def assert_clean(seen: dict) -> None:
    assert seen["errors"] == [] and seen["failed"] == [] and seen["dialogs"] == []
    assert all(url.startswith(("file:", "data:")) for url in seen["requests"]), seen["requests"]  # no network
    assert seen["images"] and all(i["ok"] and i["w"] > 0 and i["h"] > 0 for i in seen["images"]), seen["images"]


def copy_run(converged, tmp_path):
    _, runs, run_id = converged
    mine = tmp_path / "runs"
    skip = shutil.ignore_patterns("*.mp4", "*.npz", "inductor-cache", "report.html")
    shutil.copytree(runs / run_id, mine / run_id, ignore=skip)
    return mine, run_id


def test_the_converged_run_wrote_its_report_and_it_renders(converged, browser):
    _, runs, run_id = converged
    report = runs / run_id / "report.html"
    assert report.is_file()  # written by the run itself, at the end
    page, seen = open_page(browser, report, "report-converged.png")
    assert_clean(seen)
    alts = [i["alt"] for i in seen["images"]]
    assert alts[0].startswith("time per clip of each trial")
    assert "telemetry of 00-baseline" in alts and "frames of 02-lightning" in alts
    text = page.inner_text("body")
    assert "Status: converged" in text and "best configuration: 02-lightning" in text
    assert "Real weights: t2v-a14b" in text and "wan-agent generate --run " + run_id in text
    assert "SKIPPED" in text and "official-runtime" in text  # the official runtime cannot run bf16 on a CPU


def test_a_run_with_a_failed_trial_and_one_still_running(converged, browser, tmp_path):
    runs, run_id = copy_run(converged, tmp_path)

    def failed_fp8(e):
        if e["kind"] == "decision" and e["rung"] == "fp8":
            for key in ("generate_s", "samples_s", "spread_s", "speedup_vs_baseline", "denoise_s"):
                e.pop(key, None)
            e |= {"verdict": "failed", "reason": "OutOfMemoryError: CUDA out of memory <in a test>"}
        return e

    rewrite_events(runs / run_id, failed_fp8)
    done = wan_agent("report", run_id, runs_dir=runs)
    assert done.returncode == 0 and done.stdout.strip() == str(runs / run_id / "report.html"), done.stderr
    page, seen = open_page(browser, runs / run_id / "report.html", "report-failed-and-skipped.png")
    assert_clean(seen)
    text = page.inner_text("body")
    assert "FAILED" in text and "OutOfMemoryError: CUDA out of memory <in a test>" in text  # escaped, shown as text

    # Cut before it converged (no end event, no best.yaml), with a prompt that is markup.
    def in_progress(e):
        if e["kind"] in ("converged", "run_failed"):
            return None
        if e["kind"] == "run_started":
            e["workload"]["prompt"] = "<script>alert('x')</script> a cat"
        return e

    rewrite_events(runs / run_id, in_progress)
    (runs / run_id / "best.yaml").unlink()
    assert wan_agent("report", run_id, runs_dir=runs).returncode == 0
    page, seen = open_page(browser, runs / run_id / "report.html", "report-in-progress.png")
    assert_clean(seen)
    text = page.inner_text("body")
    assert "Status: stopped before converging" in text and "Not converged yet" in text
    assert "<script>alert('x')</script> a cat" in text  # the prompt is text on the page, never markup


def test_report_of_an_unknown_run_is_refused(tmp_path):
    for bad in ("nope", "../etc"):
        done = wan_agent("report", bad, runs_dir=tmp_path)
        assert done.returncode == 2 and ("no run 'nope'" in done.stderr or "is not a run id" in done.stderr), done.stderr
