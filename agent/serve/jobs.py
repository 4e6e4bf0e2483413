"""The server's jobs and their videos on disk: ``jobs/<id>.json`` (each written whole, agent/files.py) and
``videos/<id>.mp4`` under one folder, so that finished videos outlive the server.

Statuses form a closed set: ``queued -> in_progress -> completed | failed``; progress never goes down. The queue
itself lives in the engine's memory, so a restart cannot carry on with what was waiting or running: a job found
``in_progress`` or ``queued`` when the store is loaded is failed with code ``server_restarted`` and a message saying
whether it was cut short or never generated (the client submits it again). That is simpler than re-queueing, and
honest: the client learns what happened instead of waiting on a job nobody works on.

Events come from the engine's reader thread while requests read from the server's threads: one lock guards the jobs.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path

from agent.files import write_json_atomic

logger = logging.getLogger(__name__)

STATUSES = ("queued", "in_progress", "completed", "failed")
FINISHED = ("completed", "failed")
RETENTION_S = 7 * 24 * 3600
JOB_ID = re.compile(r"^video_[0-9a-f]{24}$")
RESTARTED = {
    "in_progress": "the server stopped while this video was being generated; submit it again",
    "queued": "the server stopped before this video was generated (queued jobs do not survive a restart); submit it again",
}


def new_id() -> str:
    """A job id made by the server (never from the request): it names files."""
    return "video_" + secrets.token_hex(12)


class JobStore:
    """Jobs by id, persisted under ``folder``. ``retention_s`` sets each job's ``expires_at``: a finished job past it
    is removed with its video when the store loads and whenever a job is added (DELETE removes one at once)."""

    def __init__(self, folder: Path, retention_s: int = RETENTION_S):
        self.folder, self.retention_s = Path(folder), retention_s
        self.jobs_dir, self.videos_dir = self.folder / "jobs", self.folder / "videos"
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.videos_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._jobs: dict[str, dict] = {}
        self._listeners: list[Callable[[dict], None]] = []
        self._load()

    def video_path(self, job_id: str) -> Path:
        if not JOB_ID.match(job_id):
            raise ValueError(f"{job_id!r} is not a job id")
        return (self.videos_dir / f"{job_id}.mp4").resolve()

    def subscribe(self, listener: Callable[[dict], None]) -> None:
        """Call ``listener(job)`` with a copy of each job an event changed (outside the lock)."""
        self._listeners.append(listener)

    def add(self, job_id: str, fields: dict) -> dict:
        """A new queued job: ``fields`` are the video object's (model, prompt, seconds, size) and the request's."""
        now = time.time()
        job = {"id": job_id, "created": now, "created_at": int(now), "completed_at": None,
               "expires_at": int(now) + self.retention_s, "status": "queued", "progress": 0, "error": None, **fields}  # fmt: skip
        with self._lock:
            self._sweep(now)
            self._jobs[job_id] = job
            self._save(job)
            return dict(job)

    def get(self, job_id: str) -> dict | None:
        """The job, or None when there is none by that id (or it was deleted)."""
        with self._lock:
            job = self._jobs.get(job_id)
            return dict(job) if job is not None and not job.get("deleted") else None

    def page(self, after: str | None, limit: int, order: str) -> tuple[list[dict], bool]:
        """Up to ``limit`` jobs after job ``after`` in creation order (``asc``) or its reverse, and whether more
        follow. KeyError when ``after`` names no job."""
        with self._lock:
            jobs = sorted((j for j in self._jobs.values() if not j.get("deleted")), key=lambda j: (j["created"], j["id"]),
                          reverse=order == "desc")  # fmt: skip
            ids = [j["id"] for j in jobs]
            if after is not None and after not in ids:
                raise KeyError(after)
            start = 0 if after is None else ids.index(after) + 1
            return [dict(j) for j in jobs[start : start + limit]], len(jobs) > start + limit

    def counts(self) -> dict[str, int]:
        """How many jobs are in each status (every status named, 0 included)."""
        with self._lock:
            found = {status: 0 for status in STATUSES}
            for job in self._jobs.values():
                if not job.get("deleted"):
                    found[job["status"]] += 1
            return found

    def on_event(self, event: dict) -> None:
        """Apply one event of the engine: in_progress (progress), completed (generate_s) or failed (code, message)."""
        with self._lock:
            job = self._jobs.get(event.get("job", ""))
            if job is None or job["status"] in FINISHED:
                logger.debug("event for no job in progress: %s", event)
                return
            status = event["status"]
            if status == "in_progress":
                job["status"] = "in_progress"
                job["progress"] = max(job["progress"], min(99, int(event.get("progress", 0))))
            elif status == "completed":
                job |= {"status": "completed", "progress": 100, "completed_at": int(time.time()),
                        "generate_s": event.get("generate_s")}  # fmt: skip
            elif status == "failed":
                error = {"code": str(event.get("code", "failed")), "message": str(event.get("message", ""))}
                job |= {"status": "failed", "completed_at": int(time.time()), "error": error}
            else:
                logger.warning("event of unknown status for job %s: %s", job["id"], event)
                return
            if job.get("deleted") and job["status"] in FINISHED:
                self._remove(job["id"])
            else:
                self._save(job)
            changed = dict(job)
        for listener in self._listeners:
            listener(changed)

    def delete(self, job_id: str, generating: bool) -> bool:
        """Forget a job and its video: True when done now. A job still ``generating`` (the engine could not cancel
        it) is only marked: it is gone from every answer at once, and its files go when its generation ends."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return True
            if generating and job["status"] not in FINISHED:
                job["deleted"] = True
                self._save(job)
                return False
            self._remove(job_id)
            return True

    def discard(self, job_id: str) -> None:
        """Drop a job the engine refused (the queue was full): it never existed."""
        with self._lock:
            self._remove(job_id)

    def _sweep(self, now: float) -> None:
        """Remove the finished jobs whose retention has passed, and their videos."""
        expired = [j["id"] for j in self._jobs.values() if j["status"] in FINISHED and j["expires_at"] <= now]
        for job_id in expired:
            self._remove(job_id)
        if expired:
            logger.info("removed %d expired jobs and their videos", len(expired))

    def _save(self, job: dict) -> None:
        write_json_atomic(self.jobs_dir / f"{job['id']}.json", job)

    def _remove(self, job_id: str) -> None:
        self._jobs.pop(job_id, None)
        self.video_path(job_id).unlink(missing_ok=True)
        (self.jobs_dir / f"{job_id}.json").unlink(missing_ok=True)

    def _load(self) -> None:
        for path in sorted(self.jobs_dir.glob("video_*.json")):
            try:
                job = json.loads(path.read_text(encoding="utf-8"))
                if job["id"] != path.stem or job["status"] not in STATUSES:
                    raise ValueError(f"id {job['id']!r}, status {job['status']!r}")
            except (OSError, ValueError, KeyError, TypeError) as err:
                logger.warning("passing over %s: not a job record (%s)", path, err)
                continue
            self._jobs[job["id"]] = job
            if job.get("deleted"):
                self._remove(job["id"])
            elif job["status"] in RESTARTED:
                job |= {"status": "failed", "completed_at": int(time.time()),
                        "error": {"code": "server_restarted", "message": RESTARTED[job["status"]]}}  # fmt: skip
                self._save(job)
        self._sweep(time.time())
        if self._jobs:
            logger.info("%d jobs from %s: %s", len(self._jobs), self.jobs_dir, self.counts())
