"""The ``wan-agent`` command: run, rebench, resume, stop, generate, journal, report, fetch, runs, compare, schedule.

stdout carries only what a script wants (a run id, a video path, the journal); progress goes to
stderr. Exit status: 0 done, 1 the run, generation or download failed, 2 bad input (the message says which
field and what is allowed), 3 converged but with verdicts the host's noise left open (inconclusive, or a
probe prediction the full clip did not confirm), 130 interrupted. ``compare``: 0 no regression, 1 a regression
beyond noise (named), 2 bad input or runs that cannot be compared. ``rebench``: 0 no regression (or no earlier run of
this hardware), 1 a regression beyond noise or a failed run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path

from pydantic import ValidationError

from agent import compare, hardware, history, playbook, rebench, runs, schedule, sources, variants
from agent.files import storage_problem
from agent.reuse import find_converged, key
from agent.serve.server import ServeError
from agent.sources import DownloadFailed, SourceError
from agent.state import RunStopped

logger = logging.getLogger("wan-agent")
UNRESOLVED_EXIT = 3  # converged, but some verdicts were left open by the host's noise
BAD_INPUT = (playbook.PlaybookError, runs.RunError, SourceError, variants.VariantError, compare.CannotCompare,
             rebench.RebenchError, schedule.ScheduleError, ServeError)  # fmt: skip


def pick_playbook(info: dict) -> tuple[str, str]:
    """The playbook for this hardware, and why: the tiny synthetic model without a GPU; with one, the playbook of
    the real variant that fits it (playbooks/variants.yaml)."""
    variant, passed_over = variants.fit(info)
    if not info["gpus"]:
        return "tiny", "no CUDA GPU: the tiny synthetic model, to exercise the whole loop on CPU"
    if variant is None or variant.playbook is None:
        raise runs.RunError(
            "no Wan2.2 variant fits this GPU: " + "; ".join(passed_over) + ". Name one with --playbook (see playbooks/)"
        )
    because = f"{variant.name} fits {info['gpus'][0]['name']} ({info['gpus'][0]['memory_GiB']} GiB)"
    return variant.playbook, because + (f"; passed over: {'; '.join(passed_over)}" if passed_over else "")


def _source(book: playbook.Playbook, asked: str | None) -> playbook.Playbook:
    """``--source``/``--synthetic`` (or WAN_AGENT_SOURCE): the playbook's model from elsewhere, same everything else."""
    if not asked:
        return book
    spec = sources.synthetic_twin(book.model.source) if asked == "synthetic" else asked
    if not sources.is_known(spec):
        raise SourceError(f"--source {asked!r}: use 'synthetic', a variant ({', '.join(variants.load())}) or SCHEME:... "
                          f"({', '.join(sources.SCHEMES)})")  # fmt: skip
    return book.model_copy(update={"model": book.model.model_copy(update={"source": spec})})


def _runs_dir(args) -> Path:
    return Path(args.runs_dir).resolve()


def _start(args, reuse: bool = False) -> tuple[str, Path, bool]:
    """Start a run of ``args.playbook`` (``--prompt``, ``--source``) on this machine: its id, the runs dir, and False.
    With ``reuse``, a converged run measured under the same hardware, versions and playbook instead, and True."""
    info, versions = hardware.probe(), hardware.versions()
    name, because = pick_playbook(info) if args.playbook == "auto" else (args.playbook, "named with --playbook")
    book = _source(runs.with_prompt(playbook.load(name), args.prompt), args.source or os.environ.get("WAN_AGENT_SOURCE"))
    logger.info("playbook %s (%s); model %s", book.name, because, book.model.source)
    runs_dir = _runs_dir(args)
    if reuse and (found := find_converged(runs_dir, key(book.model_dump(), info, versions))):
        return found, runs_dir, True
    seed = history.start_from(runs_dir, book, {"hardware": info, "versions": versions})
    run_id = runs.start(book, runs_dir, chosen_because=because, start_from=seed)
    logger.info("run %s started in %s (resume with: wan-agent resume %s)", run_id, runs_dir / run_id, run_id)
    return run_id, runs_dir, False


def cmd_run(args) -> int:
    run_id, runs_dir, reused = _start(args, reuse=args.reuse)
    print(run_id, flush=True)
    if reused:
        return 0
    return _finish(_drive(run_id, runs_dir), runs_dir / run_id)


def cmd_rebench(args) -> int:
    """A run judged against the previous best of this hardware; the verdict to rebench-latest.json and a webhook,
    whatever ends the run (a failure to start, a crash, a stop: then the verdict is `run failed`, with the error)."""
    config = rebench.load_config(Path(args.config)) if args.config else rebench.Config(
        playbook=args.playbook, source=args.source, webhook_url=rebench.webhook_from(args.webhook_url_file))  # fmt: skip
    args.runs_dir, args.playbook, args.source, args.prompt = (
        config.runs_dir or args.runs_dir,
        config.playbook,
        config.source,
        None,
    )
    runs_dir, run_id = _runs_dir(args), ""
    try:
        run_id, runs_dir, _ = _start(args)
        print(run_id, flush=True)
        state = _drive(run_id, runs_dir)
    except BaseException as err:
        failed = {"status": "failed", "error": f"{type(err).__name__}: {err}"}
        runs_dir.mkdir(parents=True, exist_ok=True)
        rebench.publish(runs_dir, rebench.verdict(runs_dir, run_id, failed), config.webhook_url)
        raise
    result = rebench.publish(runs_dir, rebench.verdict(runs_dir, run_id, state), config.webhook_url)
    against = f" against run {result['previous']}" if result["previous"] else ""
    logger.info("rebench %s%s: %s (%s)", run_id, against, result["verdict"], runs_dir / rebench.LATEST_FILE)
    return 1 if result["verdict"] in rebench.FAILING else 0


def cmd_serve(args) -> int:
    from agent.serve import server

    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # uvicorn stops on it and re-raises it: not a run to resume

    runs_dir = _runs_dir(args)
    if args.run == "best":  # the newest converged run of this machine's hardware
        run_id = compare.newest_best(runs_dir, hardware.probe()["fingerprint"])
    else:
        run_id = runs.latest_converged(runs_dir) if args.run == "latest" else args.run
    key = server.api_key(args.api_key_file)
    return server.run(runs.path_of(runs_dir, run_id), args.host, args.port, key, args.queue_size, args.poll_after_ms)


def cmd_resume(args) -> int:
    runs_dir = _runs_dir(args)
    return _finish(_drive(args.run_id, runs_dir), runs.path_of(runs_dir, args.run_id))


def cmd_stop(args) -> int:
    stopped = runs.stop(args.run_id, _runs_dir(args))
    if stopped:
        print(f"stopped {', '.join(stopped)}; `wan-agent resume {args.run_id}` continues the run")
    else:
        print(f"run {args.run_id}: nothing was running")
    return 0


def _drive(run_id: str, runs_dir: Path) -> dict:
    try:
        return runs.drive(run_id, runs_dir)
    except Exception as err:
        problem = storage_problem(err)
        if problem is not None:
            raise RunStopped(
                f"run {run_id} stopped: the runs directory takes no more writes ({problem}). Everything recorded "
                f"before is kept; free space or make {runs_dir} writable, then `wan-agent resume {run_id}`"
            ) from err
        if isinstance(err, RunStopped):
            raise RunStopped(f"run {run_id} stopped: {err}. Then `wan-agent resume {run_id}`") from err
        raise


def _finish(state: dict, run_dir: Path) -> int:
    logger.info("journal: %s", run_dir / "journal.md")
    if state.get("status") != "converged":
        return 1
    logger.info("best configuration: %s", run_dir / "best.yaml")
    if state.get("unresolved"):
        logger.warning(
            "converged, but %s could not be settled on this host (inconclusive or unconfirmed): see the journal",
            ", ".join(state["unresolved"]),
        )
        return UNRESOLVED_EXIT
    return 0


def cmd_generate(args) -> int:
    runs_dir = _runs_dir(args)
    run_id = runs.latest_converged(runs_dir) if args.run == "latest" else args.run
    print(runs.generate(run_id, runs_dir, args.prompt))
    return 0


def cmd_fetch(args) -> int:
    cache = Path(args.cache) if args.cache else runs.context(_runs_dir(args)).cache_dir
    files = sources.resolve(args.source, cache.resolve())
    for record in files.downloads:
        logger.info(
            "%s@%s: %d files, %.2f GB from %s (%.2f GB fetched in %.0f s%s), verified",
            record["repo"], record["revision"][:12], record["files"], record["size_bytes"] / 1e9, record["endpoint"],
            record["fetched_bytes"] / 1e9, record["seconds"], f", {record['MB_per_s']} MB/s" if record["MB_per_s"] else "",
        )  # fmt: skip
    print(files.path)
    if files.lora:
        print("\n".join(files.lora.values()))
    return 0


def cmd_journal(args) -> int:
    path = runs.path_of(_runs_dir(args), args.run_id) / "journal.md"
    if not path.exists():
        raise runs.RunError(f"no journal at {path}")
    sys.stdout.write(path.read_text())
    return 0


def cmd_report(args) -> int:
    from agent.report import html  # matplotlib: only for this command

    print(html.write(runs.path_of(_runs_dir(args), args.run_id)))  # no such run: CannotCompare, exit 2
    return 0


def cmd_runs(args) -> int:
    rows = compare.listing(_runs_dir(args))
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    table = [["run", "started", "hardware", "model", "playbook", "status", "best", "speed-up"]]
    for r in rows:
        best = f"{r['best_s']:.3f} s" if r["best_s"] is not None else "-"
        speedup = f"{r['speedup']:.2f}x" if r["speedup"] is not None else "-"
        table.append([r["id"], r["started"] or "-", r["hardware"], r["source"], r["playbook"] or "-", r["status"], best, speedup])
    widths = [max(len(str(row[i])) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return 0


def cmd_compare(args) -> int:
    runs_dir = _runs_dir(args)
    for ref in (args.a, args.b):
        if ref != "best":
            runs.path_of(runs_dir, ref)  # refuses what is not a run id
    if args.b == "best":
        args.b = compare.newest_best(runs_dir, hardware.probe()["fingerprint"])
    b = compare.load(runs_dir, args.b)
    if args.a == "best":  # the previous best of B's hardware
        args.a = compare.newest_best(runs_dir, b.record.get("hardware", {}).get("fingerprint", "?"), before=b.id)
    report = compare.compare(compare.load(runs_dir, args.a), b)
    sys.stdout.write(json.dumps(report, indent=1) + "\n" if args.json else compare.markdown(report))
    return 1 if report["regressions"] else 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="wan-agent", description="Deploy and benchmark Wan2.2; converge on the fastest good configuration."
    )
    p.add_argument("--runs-dir", default=os.environ.get("WAN_AGENT_RUNS", "runs"), help="where runs live (default: ./runs)")
    p.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="start a run; prints its id")
    run.add_argument("--playbook", default="auto", help="name in playbooks/, a path, or 'auto' to pick for this hardware")
    run.add_argument("--prompt", help="the prompt trials generate (default: the playbook's)")
    run.add_argument(
        "--reuse",
        action="store_true",
        help="print the id of a converged run for this playbook and hardware instead of searching again",
    )
    run.add_argument(
        "--source",
        help="take the model from here instead of the playbook's: 'synthetic' (random weights, no download), a variant, "
        "hf:REPO[@REV], modelscope:REPO[@REV], local:PATH (default: $WAN_AGENT_SOURCE, else the playbook's)",
    )
    run.set_defaults(func=cmd_run)
    bench = sub.add_parser("rebench", help="a run judged against this hardware's previous best (what a schedule runs); "
                           "exit 1 on a regression beyond noise or a failed run")  # fmt: skip
    bench.add_argument("--config", help="the schedule's file (agent/schedule.py writes it); else the flags below")
    bench.add_argument("--playbook", default="auto", help="name in playbooks/, a path, or 'auto'")
    bench.add_argument("--source", help="as for run: 'synthetic', a variant, hf:..., modelscope:..., local:...")
    bench.add_argument("--webhook-url-file", help=f"a file holding a URL the verdict is POSTed to (else ${rebench.WEBHOOK_ENV})")
    bench.set_defaults(func=cmd_rebench)
    resume = sub.add_parser("resume", help="continue a run that stopped")
    resume.add_argument("run_id")
    resume.set_defaults(func=cmd_resume)
    gen = sub.add_parser("generate", help="generate a prompt with a run's best configuration; prints the video path")
    gen.add_argument("--run", default="latest", help="run id (default: the newest converged run)")
    gen.add_argument("--prompt", required=True)
    gen.set_defaults(func=cmd_generate)
    journal = sub.add_parser("journal", help="print a run's journal.md")
    journal.add_argument("run_id")
    journal.set_defaults(func=cmd_journal)
    stop = sub.add_parser("stop", help="stop a run: its agent and its trial (resume continues it)")
    stop.add_argument("run_id")
    stop.set_defaults(func=cmd_stop)
    fetch = sub.add_parser("fetch", help="download and verify a variant or source without running anything; prints its path")
    fetch.add_argument("source", help=f"a variant ({', '.join(variants.load())}), hf:REPO[@REV] or modelscope:REPO[@REV]")
    fetch.add_argument("--cache", help="where models are kept (default: $WAN_AGENT_CACHE, else RUNS_DIR/.cache)")
    fetch.set_defaults(func=cmd_fetch)
    rep = sub.add_parser("report", help="write the run's report.html (one self-contained page); prints its path")
    rep.add_argument("run_id")
    rep.set_defaults(func=cmd_report)
    listed = sub.add_parser("runs", help="list the runs, newest first")
    listed.add_argument("--json", action="store_true", help="one JSON array instead of the table")
    listed.set_defaults(func=cmd_runs)
    cmp = sub.add_parser("compare", help="two runs side by side; exit 1 on a regression beyond noise, 2 if not comparable")
    cmp.add_argument("a", help="the reference run id, or 'best': the previous converged run of B's hardware")
    cmp.add_argument("b", help="the run judged, or 'best': the newest converged run of this machine's hardware")
    cmp.add_argument("--json", action="store_true", help="the report as JSON instead of Markdown")
    cmp.set_defaults(func=cmd_compare)
    schedule.add_parser(sub)
    srv = sub.add_parser("serve", help="serve a converged configuration behind the OpenAI Videos API (/v1/videos)")
    srv.add_argument("--run", default="best", help="run id, 'best' (this hardware's newest converged run) or 'latest'")
    srv.add_argument("--host", default="127.0.0.1", help="address to bind (another than loopback needs an API key)")
    srv.add_argument("--port", type=int, default=8000)
    srv.add_argument("--api-key-file", help="a file holding the API key clients must send (else $WAN_AGENT_API_KEY)")
    srv.add_argument("--queue-size", type=int, default=8, help="jobs that may wait; more are refused with 429")
    srv.add_argument("--poll-after-ms", type=int, default=1000, help="the openai-poll-after-ms hint for clients")
    srv.set_defaults(func=cmd_serve)
    return p


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt  # SIGTERM stops a run as Ctrl-C does: its trial is stopped too


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    # A run a script starts with `&` inherits SIGINT ignored, and Python then leaves it so: Ctrl-C and `wan-agent
    # stop` (which sends SIGINT) would not reach it.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("httpx", "httpx2", "diffusers", "transformers", "libtmux", "modelscope_hub", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return args.func(args)
    except DownloadFailed as err:
        print(f"wan-agent: {err}", file=sys.stderr)
        return 1
    except BAD_INPUT as err:
        print(f"wan-agent: {err}", file=sys.stderr)
        return 2
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        print(f"wan-agent: invalid input: {problems}", file=sys.stderr)
        return 2
    except RunStopped as err:
        print(f"wan-agent: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        problem = storage_problem(err)
        if problem is None:
            raise
        print(f"wan-agent: cannot write to {_runs_dir(args)}: {problem}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("wan-agent: interrupted (its trial was stopped); `wan-agent resume RUN_ID` continues the run", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
