"""`wan-agent serve`: a converged run's configuration behind the OpenAI Videos API, on uvicorn. Binds to loopback
unless told otherwise, and then only with an API key (from a file or $WAN_AGENT_API_KEY, never a command line)."""

from __future__ import annotations

import ipaddress
import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)

API_KEY_ENV = "WAN_AGENT_API_KEY"


class ServeError(ValueError):
    """A server that must not start as asked (no converged run, a public address without a key); says what to do."""


def api_key(key_file: str | None) -> str | None:
    if key_file:
        try:
            key = Path(key_file).read_text().strip()
        except OSError as err:
            raise ServeError(f"--api-key-file {key_file}: {err.strerror}") from None
        if not key:
            raise ServeError(f"--api-key-file {key_file} is empty")
        return key
    return os.environ.get(API_KEY_ENV, "").strip() or None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve anywhere
        return False


def run(run_dir: Path, host: str, port: int, key: str | None, queue_size: int, poll_after_ms: int) -> int:
    import uvicorn

    from agent.serve.app import create_app
    from agent.serve.engine import Engine
    from agent.serve.jobs import JobStore

    if key is None and not is_loopback(host):
        raise ServeError(f"--host {host} is reachable from other machines: set an API key first ({API_KEY_ENV} or "
                         "--api-key-file FILE), or bind to 127.0.0.1")  # fmt: skip
    store = JobStore(run_dir / "serve")
    engine = Engine(run_dir, store.on_event, queue_size=queue_size)
    logger.info("serving run %s (%s) on http://%s:%d/v1/videos%s", run_dir.name, engine.config.knobs.describe(), host, port,
                "" if key else " (no API key: loopback only)")  # fmt: skip
    uvicorn.run(create_app(engine, store, key, poll_after_ms), host=host, port=port, log_level="info")
    return 0
