"""Which CUDA builds of torch a driver can run, for start_wan.sh to try when the torch pip chose does not see the GPU.

pip installs torch's default build from PyPI, compiled for one CUDA version (torch 2.11: CUDA 13.0). A driver older
than that CUDA cannot run it: torch imports, then sees no GPU, and every trial would run on the CPU. PyTorch publishes
other builds of the same release on one index per CUDA version (download.pytorch.org/whl/cuXYZ); a driver runs any
build for its own CUDA version or an older one. Which builds a release has varies, so these are tried newest first:

    python -m agent.provision.torch_build 12.4    # prints one index URL per line: cu124, cu121, cu118
"""

from __future__ import annotations

import re
import sys

BUILDS = ("13.0", "12.9", "12.8", "12.6", "12.4", "12.1", "11.8")  # CUDA versions PyTorch has published builds for
INDEX = "https://download.pytorch.org/whl/cu{}"


def _version(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)\.(\d+)", text.strip())
    if not match:
        raise ValueError(f"not a CUDA version: {text!r} (expected MAJOR.MINOR, as nvidia-smi prints it)")
    return int(match[1]), int(match[2])


def candidates(driver_cuda: str) -> list[str]:
    """Index URLs of the torch builds a driver of CUDA ``driver_cuda`` runs, newest first."""
    driver = _version(driver_cuda)
    return [INDEX.format(build.replace(".", "")) for build in BUILDS if _version(build) <= driver]


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m agent.provision.torch_build DRIVER_CUDA_VERSION", file=sys.stderr)
        return 2
    try:
        print("\n".join(candidates(argv[1])))
    except ValueError as err:
        print(f"torch_build: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
