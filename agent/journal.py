"""The run's journal: ``journal.jsonl`` (one event per line) and ``journal.md`` rendered from it.

Events are appended with O_APPEND and fsync, one write per line; a line torn by a crash is cut off
the next time the journal is opened. Events that describe a step carry a ``key``; recording a key
twice (a node re-run after a resume) is a no-op, so nothing is counted twice. Secrets found in the
environment are masked before anything is written.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from agent.files import write_text_atomic

SECRET_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "MODELSCOPE_API_TOKEN", "MODELSCOPE_TOKEN")


def redact(text: str) -> str:
    """Mask the values of known token variables wherever they appear in ``text``."""
    for name in SECRET_ENV:
        value = os.environ.get(name)
        if value and len(value) >= 4:
            text = text.replace(value, f"<{name}>")
    return text


def read_events(path: Path) -> list[dict]:
    """The events of a ``journal.jsonl``, read only: a last line not yet ended (being written, or torn by a crash) is
    left out, so that a run in progress can be read (compare, report) while its agent appends."""
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    return [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines() if line.strip()]


class Journal:
    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "journal.jsonl"
        self._cut_torn_tail()

    def _cut_torn_tail(self) -> None:
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        data = self.path.read_bytes()
        if not data.endswith(b"\n"):
            with open(self.path, "r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)
                os.fsync(f.fileno())

    def events(self) -> list[dict]:
        return read_events(self.path)

    def has(self, key: str) -> bool:
        return any(e.get("key") == key for e in self.events())

    def record(self, kind: str, key: str | None = None, **fields) -> bool:
        """Append an event; return False (and write nothing) if ``key`` was already recorded."""
        if key is not None and self.has(key):
            return False
        event = {"ts": round(time.time(), 3), "kind": kind, **({"key": key} if key else {}), **fields}
        line = redact(json.dumps(event, default=str, ensure_ascii=False)) + "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)
        return True

    def render(self) -> str:
        from agent.narrative import render_markdown

        text = redact(render_markdown(self.events()))
        write_text_atomic(self.run_dir / "journal.md", text)
        return text
