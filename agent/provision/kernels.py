"""Run by provision in a child process: a tiny bf16 matmul and attention on each visible GPU; prints the problems
as a JSON list (empty: every GPU runs torch's kernels)."""

from __future__ import annotations

import json

import torch
import torch.nn.functional as F


def main() -> None:
    found = []
    for index in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
        try:
            x = torch.randn(1, 2, 16, 64, device=f"cuda:{index}", dtype=torch.bfloat16)
            F.scaled_dot_product_attention(x, x, x) @ x.transpose(-1, -2)
            torch.cuda.synchronize(index)
        except RuntimeError as err:
            found.append(f"GPU {index} cannot run torch's kernels: {str(err).splitlines()[0][:200]}")
    print(json.dumps(found))


if __name__ == "__main__":
    main()
