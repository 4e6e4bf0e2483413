"""The trial host: one process that runs a run's single-process trials one after another.

Each trial in a process of its own pays again for what every trial does the same way: importing torch, diffusers and
torchao, starting CUDA and Inductor's compile workers, and the interpreter's teardown (on an H100 machine a trial took
~20 s from its session's start to its first forward, benchmarks/results/h100-2026-11-27d). A host pays for them once.

    python -m agent.runtime.host QUEUE_DIR

The agent asks for a trial by writing its trial.json's path into ``QUEUE_DIR/next`` (written, then renamed); the host
takes it, runs it as the worker would (``agent.runtime.worker.run_trial``) with its output appended to the trial's
``stdout.log``, then writes the trial's ``exit_code`` as a trial's own tmux session would. Between trials it puts back
what a trial may change process-wide (``ProcessState``), so that each starts as in a new process. It runs only what
it can run as a new process would (agent.runtime.sharing.refusal), and stops after a trial that did not succeed (what a
failure left in the process is not trusted), after ``IDLE_S`` without a request, or when ``QUEUE_DIR/stop`` appears.
agent/trial_host.py starts and stops it.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import random
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

from agent.files import atomic_path
from agent.runtime import kernels, worker
from agent.runtime.sharing import CURRENT, REQUEST, STOP, refusal

logger = logging.getLogger("agent.host")

IDLE_S = 300.0  # an agent that died leaves no host holding the GPU for longer than this
POLL_S = 0.05


class ProcessState:
    """What a trial may change for the whole process, as it was when the host started."""

    def __init__(self) -> None:
        self.inductor = torch._inductor.config.save_config()
        self.dynamo = torch._dynamo.config.save_config()
        self.flags = self._flags()
        self.matmul_precision = torch.get_float32_matmul_precision()
        self.threads = torch.get_num_threads()
        self.rng = (torch.random.get_rng_state(), np.random.get_state(), random.getstate())
        self.environ = dict(os.environ)
        self.fp8_attention = kernels._fp8

    @staticmethod
    def _flags() -> dict[str, bool]:
        cudnn, cuda = torch.backends.cudnn, torch.backends.cuda.matmul
        return {"benchmark": cudnn.benchmark, "deterministic": cudnn.deterministic, "cudnn_tf32": cudnn.allow_tf32,
                "matmul_tf32": cuda.allow_tf32, "bf16_reduced": cuda.allow_bf16_reduced_precision_reduction}  # fmt: skip

    def restore(self) -> None:
        """Compiled code dropped, configuration, flags, threads, random state and environment as they were, the
        memory a trial held given back and the peaks measured from here (agent.runtime.worker reads them)."""
        torch._dynamo.reset()
        torch._inductor.config.load_config(self.inductor)
        torch._dynamo.config.load_config(self.dynamo)
        cudnn, cuda = torch.backends.cudnn, torch.backends.cuda.matmul
        flags = self.flags
        cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32 = flags["benchmark"], flags["deterministic"], flags["cudnn_tf32"]
        cuda.allow_tf32, cuda.allow_bf16_reduced_precision_reduction = flags["matmul_tf32"], flags["bf16_reduced"]
        torch.set_float32_matmul_precision(self.matmul_precision)
        torch.set_num_threads(self.threads)
        torch.random.set_rng_state(self.rng[0])
        np.random.set_state(self.rng[1])
        random.setstate(self.rng[2])
        for key in set(os.environ) - set(self.environ):  # key by key: threads of Inductor's may be reading it
            del os.environ[key]
        for key, value in self.environ.items():
            if os.environ.get(key) != value:
                os.environ[key] = value
        kernels._fp8 = self.fp8_attention
        torch._inductor.utils.clear_inductor_caches()
        gc.collect()
        if torch.cuda.is_initialized():
            torch.cuda.set_device(0)  # a new process's current device, which a trial asking for "cuda" gets
            torch.cuda.empty_cache()  # (the worker resets the peak memory it reports once its pipeline is built)
        with contextlib.suppress(OSError):  # Linux: the peak resident set (VmHWM) counts again from here
            Path("/proc/self/clear_refs").write_text("5")


@contextlib.contextmanager
def _output_to(log: Path):
    """This process's stdout and stderr (Python's and the C libraries') appended to ``log`` for the block's length."""
    worker.flush_output()  # what is buffered belongs where fds 1 and 2 point now
    saved = os.dup(1), os.dup(2)
    target = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.dup2(target, 1)
        os.dup2(target, 2)
        yield
    finally:
        worker.flush_output()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (target, *saved):
            os.close(fd)


def run_one(trial_file: Path, served: int, queue: Path) -> int:
    """One trial as its own worker process would run it; its exit code is written beside it, always. Where it did not
    succeed, the host says it is stopping before the agent can ask for the next trial."""
    trial_dir = trial_file.parent
    with _output_to(trial_dir / "stdout.log"):
        try:
            config = worker.load(trial_file)
            why = None if config is None else refusal(config)
            if why is not None:
                print(f"the trial host does not run {trial_file}: {why}", file=sys.stderr)
            if config is None or why is not None:
                code = 2
            else:
                worker.HOSTED = {"pid": os.getpid(), "trials_before": served}
                code = worker.run_trial(config)
        except BaseException:  # what a worker process would have died of (a full disk writing its result, say)
            traceback.print_exc()
            code = 1
    if code != 0:
        (queue / STOP).touch()
    with atomic_path(trial_dir / "exit_code") as path:
        path.write_text(f"{code}\n")
    return code


def serve(queue: Path, idle_s: float = IDLE_S) -> int:
    """Run the trials asked for in ``queue`` until a stop, an idle spell or a trial that did not succeed."""
    queue.mkdir(parents=True, exist_ok=True)
    state, served, last = ProcessState(), 0, time.monotonic()
    logger.info("trial host %d ready: %s", os.getpid(), queue)
    while not (queue / STOP).exists():
        request = queue / REQUEST
        if not request.exists():
            if time.monotonic() - last > idle_s:
                (queue / STOP).touch()  # from here on the agent starts a new host for its next trial
                if not request.exists():  # unless it asked just before
                    logger.info("no trial for %.0f s: stopping", idle_s)
                    return 0
                (queue / STOP).unlink()
                continue
            time.sleep(POLL_S)
            continue
        trial_file = Path(request.read_text().strip())
        with atomic_path(queue / CURRENT) as current:  # before the request goes: an agent restarting finds it either way
            current.write_text(str(trial_file))
        request.unlink()
        logger.info("trial %s", trial_file.parent.name)
        code = run_one(trial_file, served, queue)
        (queue / CURRENT).unlink(missing_ok=True)
        served, last = served + 1, time.monotonic()
        if code != 0:
            logger.info("trial %s ended with %d: stopping (the next trial starts a new host)", trial_file.parent.name, code)
            return 0
        state.restore()
    logger.info("asked to stop")
    return 0


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stdout)
    if len(argv) != 2:
        print("usage: python -m agent.runtime.host QUEUE_DIR", file=sys.stderr)
        return 2
    return serve(Path(argv[1]))


if __name__ == "__main__":
    worker.end_now(main(sys.argv))  # as the worker: nothing is left to do but the interpreter's teardown
