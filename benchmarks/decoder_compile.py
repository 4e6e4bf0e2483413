"""What compiling the VAE decoder (``vae_decode: compiled``) costs and gives, by how Dynamo treats its shapes (issue 16):
the decoder's compile was ~100 s of a bare search on an H100, paid again by the official runtime's decoder. Each mode
runs in a process of its own with an empty Inductor cache, as on a bare machine: the seconds of the first two decodes
(compile, then the recompiles the second one asks for), the median of three warm decodes, how many graphs Dynamo made,
and the frames against the channels-last eager decode of the same latents. Writes JSON with the hardware and versions.

    python benchmarks/decoder_compile.py --model a14b --modes static,automatic,dynamic --out OUT.json
    python benchmarks/decoder_compile.py --model a14b --modes static-unlimited --out OUT.json
    python benchmarks/decoder_compile.py --model tiny --device cpu --height 48 --width 64 --frames 9 --out /tmp/d.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# How each mode asks Dynamo (dynamic=, and how many graphs a function may have before the rest run eager): one graph
# per shape up to Dynamo's limit of 8 (the agent's today), the same with room for every shape the decoder calls a
# function at, shapes made symbolic once a second one is seen (Dynamo's default), or symbolic from the start.
MODES = {"static": (False, None), "static-unlimited": (False, 64), "automatic": (None, None), "dynamic": (True, None)}


def measure(args, mode: str) -> dict:
    """One mode, in this process: the decoder built, laid out for cuDNN, decoded eager, then compiled and timed."""
    import torch
    from diffusers import AutoencoderKLWan
    from torch._dynamo.utils import counters

    from agent.quality import fidelity
    from agent.runtime import probe
    from agent.runtime.generate import decode
    from agent.runtime.vae_decode import VAE_INDUCTOR_OPTIONS, tune_vae
    from agent.sources import synthetic

    device = torch.device(args.device)
    torch.manual_seed(0)
    vae = AutoencoderKLWan(**synthetic.preset(args.model).vae).to(device, torch.bfloat16).eval()
    pipe = SimpleNamespace(vae=vae)
    spatial, temporal = vae.config.scale_factor_spatial, vae.config.scale_factor_temporal  # 8 and 4 (A14B), 16 and 4 (5B)
    shape = (1, vae.config.z_dim, (args.frames - 1) // temporal + 1, args.height // spatial, args.width // spatial)
    latents = torch.randn(shape, generator=torch.Generator().manual_seed(42)).to(device, torch.bfloat16)
    tune_vae(vae, "channels_last")
    eager, _ = decode(pipe, latents)

    def timed() -> float:
        stop = probe.timer(device)
        decode(pipe, latents)
        return stop()

    eager_s = statistics.median(timed() for _ in range(3))
    dynamic, limit = MODES[mode]
    if limit is not None:
        torch._dynamo.config.recompile_limit = limit
    vae.decoder.compile(dynamic=dynamic, options=VAE_INDUCTOR_OPTIONS)
    t0 = time.perf_counter()
    first = timed()
    second = timed()
    compile_wall_s = time.perf_counter() - t0
    samples = [timed() for _ in range(3)]
    frames, _ = decode(pipe, latents)
    return {
        "mode": mode,
        "dynamic": dynamic,
        "recompile_limit": torch._dynamo.config.recompile_limit,
        "first_decode_s": first,
        "second_decode_s": second,
        "compile_wall_s": compile_wall_s,
        "decode_samples_s": samples,
        "decode_s": statistics.median(samples),
        "eager_channels_last_decode_s": eager_s,
        "unique_graphs": counters["stats"]["unique_graphs"],
        "graph_breaks": sum(counters["graph_break"].values()),
        "against_eager": fidelity(frames / 255.0, eager / 255.0),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="a14b")
    p.add_argument("--device", default="cuda")
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--width", type=int, default=832)
    p.add_argument("--frames", type=int, default=81)
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--out", type=Path)
    p.add_argument("--one", choices=list(MODES), help=argparse.SUPPRESS)  # a child: one mode, its JSON on stdout
    args = p.parse_args()
    if args.one:
        print(json.dumps(measure(args, args.one)))
        return 0
    if args.out is None:
        p.error("--out is required")
    from agent import hardware
    from agent.files import write_json_atomic

    results = []
    for mode in args.modes.split(","):
        if mode not in MODES:
            p.error(f"unknown mode {mode!r}: one of {', '.join(MODES)}")
        with tempfile.TemporaryDirectory(prefix="inductor-") as cache:  # cold, as on a bare machine
            argv = [sys.executable, __file__, "--one", mode, *sys.argv[1:]]
            env = os.environ | {"TORCHINDUCTOR_CACHE_DIR": cache, "TRITON_CACHE_DIR": os.path.join(cache, "triton")}
            child = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
        if child.returncode != 0:  # said, kept with the others' figures
            print(f"{mode}: failed (exit {child.returncode})\n{child.stderr[-3000:]}", file=sys.stderr)
            results.append({"mode": mode, "failed": child.returncode, "stderr_tail": child.stderr[-3000:]})
            continue
        results.append(json.loads(child.stdout.strip().splitlines()[-1]))
        r = results[-1]
        print(
            f"{mode}: compile {r['compile_wall_s']:.1f} s (first {r['first_decode_s']:.1f}, second {r['second_decode_s']:.1f}),"
            f" decode {r['decode_s']:.3f} s (eager channels-last {r['eager_channels_last_decode_s']:.3f}),"
            f" {r['unique_graphs']} graphs, {r['against_eager']['psnr_dB']:.1f} dB against eager",
            flush=True,
        )
    shape = {"height": args.height, "width": args.width, "frames": args.frames}
    about = {"hardware": hardware.probe(), "versions": hardware.versions(), "model": f"synthetic:{args.model}"}
    write_json_atomic(args.out, about | {"workload": shape, "results": results})
    return 1 if any("failed" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
