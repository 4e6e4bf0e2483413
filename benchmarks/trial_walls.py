"""Where each trial of an agent run spent its wall time, from the run directory alone (its journal.jsonl and each
trial's stdout.log and result.json): the per-trial tables of docs/benchmarks.md's search sections.

    python benchmarks/trial_walls.py benchmarks/results/h100-2026-11-27d/agent-run-bare

Per trial: its wall (from its planning to the next trial's, as the journal records them); from its first log line to
its pipeline being ready, what the stages it timed (loading, fusing the LoRA, preparing) leave unaccounted (imports,
starting CUDA, an attention backend's probe); and from its last log line to the agent's record of its end (the
worker's exit). Log lines carry whole seconds, so the last two are whole seconds, ±1.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

_CLOCK = re.compile(r"^(\d\d):(\d\d):(\d\d) ")


def _seconds_of_day(line: str) -> int | None:
    found = _CLOCK.match(line)
    return None if found is None else int(found[1]) * 3600 + int(found[2]) * 60 + int(found[3])


def walls(run_dir: Path) -> list[dict]:
    events = [json.loads(line) for line in (run_dir / "journal.jsonl").read_text().splitlines()]
    planned = [(e["trial"], e["ts"]) for e in events if e["kind"] == "trial_planned"]
    finished = {e["trial"]: e["ts"] for e in events if e["kind"] == "trial_finished"}
    end = next((e["ts"] for e in events if e["kind"] == "converged"), None)
    rows = []
    for i, (name, start) in enumerate(planned):
        following = planned[i + 1][1] if i + 1 < len(planned) else end
        trial = run_dir / "trials" / name
        lines = (trial / "stdout.log").read_text(errors="replace").splitlines()
        clock = [t for line in lines if (t := _seconds_of_day(line)) is not None]
        ready = [_seconds_of_day(line) for line in lines if " ready in " in line]
        stages = json.loads((trial / "result.json").read_text()).get("stages", {})
        built = sum(stages.get(k, 0.0) for k in ("load_s", "lora_fuse_s", "prepare_s"))
        rows.append({
            "trial": name,
            "wall_s": None if following is None else following - start,
            "unaccounted_before_ready_s": None if not ready or not clock else ready[0] - clock[0] - built,
            "exit_s": None if name not in finished or not clock else (finished[name] % 86400) - clock[-1],
        })  # fmt: skip
    return rows


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not (Path(argv[1]) / "journal.jsonl").is_file():
        print("usage: python benchmarks/trial_walls.py RUN_DIR (a run directory, with its journal.jsonl)", file=sys.stderr)
        return 2
    print("| trial | wall | first line to ready, not in its stages | last line to its end |")
    print("| --- | --- | --- | --- |")
    for row in walls(Path(argv[1])):
        cells = [f"{row[k]:.0f} s" if row[k] is not None else "n/a" for k in ("wall_s", "unaccounted_before_ready_s", "exit_s")]
        print(f"| {row['trial']} | {' | '.join(cells)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
