"""``GET /metrics``: the server's figures in Prometheus' text format, from a registry of its own.

Queue depth, readiness and jobs by status are read from the engine and the store at scrape time; generation latency
is a histogram observed as jobs complete; GPU power and memory come from NVML at scrape time. Without NVML (no GPU,
no driver) the GPU series are absent, never zero: a figure that was not measured is not reported.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Protocol

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector

from agent.serve.jobs import JobStore

logger = logging.getLogger(__name__)

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4  # what generate_latest writes
# From a tiny model's fraction of a second to a full-size clip's tens of minutes.
LATENCY_BUCKETS = (0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600, float("inf"))


class Queue(Protocol):
    """What the metrics read of the engine (agent/serve/engine.py)."""

    def depth(self) -> int: ...
    def ready(self) -> tuple[bool, str]: ...


class ServerState(Collector):
    def __init__(self, engine: Queue, store: JobStore):
        self.engine, self.store = engine, store

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("wan_agent_queue_depth", "Jobs waiting for the GPU worker (not the one running)",
                                value=self.engine.depth())  # fmt: skip
        yield GaugeMetricFamily("wan_agent_ready", "1 when the worker is loaded and warm", value=int(self.engine.ready()[0]))
        jobs = GaugeMetricFamily("wan_agent_jobs", "Jobs the server holds, by status", labels=["status"])
        for status, count in self.store.counts().items():
            jobs.add_metric([status], count)
        yield jobs


class NvmlGpus(Collector):
    """Power draw and memory used of each GPU NVML sees, read when scraped; nothing without NVML."""

    def __init__(self) -> None:
        self.nvml = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self.count = pynvml.nvmlDeviceGetCount()
            self.nvml = pynvml
        except Exception as err:  # ImportError, NVMLError_LibraryNotFound, NVMLError_DriverNotLoaded, ...
            logger.info("no NVML (%s: %s): /metrics leaves out GPU power and memory", type(err).__name__, err)

    def collect(self) -> Iterator[Metric]:
        if self.nvml is None:
            return
        power = GaugeMetricFamily("wan_agent_gpu_power_watts", "GPU power draw (NVML)", labels=["gpu", "uuid"])
        memory = GaugeMetricFamily("wan_agent_gpu_memory_used_bytes", "GPU memory in use (NVML)", labels=["gpu", "uuid"])
        for index in range(self.count):
            try:
                handle = self.nvml.nvmlDeviceGetHandleByIndex(index)
                labels = [str(index), self.nvml.nvmlDeviceGetUUID(handle)]
            except self.nvml.NVMLError as err:
                logger.debug("NVML: GPU %d: %s", index, err)
                continue
            for family, read in ((power, lambda h: self.nvml.nvmlDeviceGetPowerUsage(h) / 1000),
                                 (memory, lambda h: self.nvml.nvmlDeviceGetMemoryInfo(h).used)):  # fmt: skip
                try:
                    family.add_metric(labels, read(handle))
                except self.nvml.NVMLError as err:  # this GPU does not report it: left out
                    logger.debug("NVML: GPU %d: %s", index, err)
        yield power
        yield memory


class ServeMetrics:
    """The registry behind /metrics; observes each job the store reports completed."""

    def __init__(self, engine: Queue, store: JobStore, gpus: Collector | None = None):
        self.registry = CollectorRegistry()
        self.latency = Histogram("wan_agent_generation_seconds", "Time the worker took to generate a job's clip",
                                 buckets=LATENCY_BUCKETS, registry=self.registry)  # fmt: skip
        self.registry.register(ServerState(engine, store))
        self.registry.register(gpus if gpus is not None else NvmlGpus())
        store.subscribe(self.observe)

    def observe(self, job: dict) -> None:
        if job["status"] == "completed" and job.get("generate_s") is not None:
            self.latency.observe(float(job["generate_s"]))

    def render(self) -> bytes:
        return generate_latest(self.registry)
