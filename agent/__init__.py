"""wan-agent: brings a GPU server to its fastest measured Wan2.2 configuration."""

import os

# TORCHINDUCTOR_CACHE_DIR as this process was started, read before anything imports torch._dynamo: that import sets
# it in the process to torch's default under /tmp (diffusers imports it when planning asks what a rung supports),
# which would send every later trial away from the run's own cache (agent/trials.py worker_env).
INDUCTOR_CACHE_AT_START = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
