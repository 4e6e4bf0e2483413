"""How many graphs Dynamo makes of one official Wan2.2 DiT block (wan22's WanAttentionBlock, the agent's attention
stand-in in place of flash_attn), with the sequence lengths passed in as the DiT passes them and with them checked
outside the block (``attention_patch.lengths_checked_outside``, what regional compile of the official runtime does),
and why it breaks. Tracing only (``torch._dynamo.explain``, no Inductor): the same count on a CPU as on a GPU.
Writes JSON with the versions.

    python benchmarks/official_block_graphs.py --out OUT.json
"""

from __future__ import annotations

import argparse
import sys
from importlib import metadata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def explain(block, args, kwargs) -> dict:
    import torch
    import torch._dynamo as dynamo

    dynamo.reset()
    with torch.no_grad():
        found = dynamo.explain(block.forward)(*args, **kwargs)
    reasons = [
        f"{b.user_stack[-1].filename.split('/')[-1]}:{b.user_stack[-1].lineno}" for b in found.break_reasons if b.user_stack
    ]
    return {"graphs": found.graph_count, "graph_breaks": found.graph_break_count, "breaks_at": sorted(set(reasons))}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    import torch

    from agent import hardware
    from agent.files import write_json_atomic
    from agent.runtime.official import convert, modules
    from agent.sources import synthetic

    modules.patch_attention(torch.device("cpu"))
    tiny = synthetic.build_pipeline("tiny", 0, dtype=torch.float32)
    official = convert.transformer(tiny.transformer)
    block, seen = official.blocks[0], {}
    hook = block.register_forward_pre_hook(lambda _m, a, kw: seen.update(args=a, kwargs=kw), with_kwargs=True)
    x, text = torch.randn(16, 5, 12, 20), torch.randn(512, 64)
    with torch.no_grad():
        official([x], torch.tensor([700.0]), [text], seq_len=5 * 6 * 10)
    hook.remove()
    results = {
        "lengths_passed_in": explain(block, seen["args"], seen["kwargs"]),
        "lengths_checked_outside": explain(block, seen["args"], seen["kwargs"] | {"seq_lens": None}),
    }
    for name, found in results.items():
        print(f"{name}: {found['graphs']} graphs, {found['graph_breaks']} breaks at {', '.join(found['breaks_at'])}")
    versions = hardware.versions() | {"wan22": metadata.version("wan22")}
    write_json_atomic(args.out, {"versions": versions, "model": "synthetic:tiny", "block": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
