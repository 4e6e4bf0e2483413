#!/usr/bin/env bash
# One-command bring-up: make .venv if missing, install wan-agent with pinned versions, converge on the
# fastest configuration for this hardware (or reuse a converged run), then generate PROMPT with it, or serve it
# behind the OpenAI Videos API (--serve).
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: ./start_wan.sh [--rebench] [--synthetic] [--runs-dir DIR] "PROMPT"
       ./start_wan.sh --serve [--host HOST] [--port PORT] [--rebench] [--synthetic] [--runs-dir DIR] ["PROMPT"]
       ./start_wan.sh --install-only [--dev]

  PROMPT          what to generate with the winning configuration (quote it)
  --rebench       search again even if this hardware already has a converged run
  --synthetic     random weights with the real architecture: benchmark without downloading (videos are noise);
                  same as WAN_AGENT_SOURCE=synthetic. On a GPU the default is the real Wan2.2 variant that fits,
                  downloaded from the Hugging Face Hub (HF_ENDPOINT for a mirror) or ModelScope
  --runs-dir DIR  where runs live (default: runs, or $WAN_AGENT_RUNS)
  --serve         then serve the converged configuration: POST /v1/videos (OpenAI's Videos API), /health, /metrics
  --host, --port  where to serve (default 127.0.0.1:8000; another address needs $WAN_AGENT_API_KEY)
  --install-only  make .venv and install, then stop (--dev adds the test tools)
USAGE
}

cd "$(dirname "${BASH_SOURCE[0]}")"
rebench=0 install_only=0 dev=0 prompt="" have_prompt=0 serve=0 host=127.0.0.1 port=8000
runs_dir="${WAN_AGENT_RUNS:-runs}"
while [ $# -gt 0 ]; do
  case "$1" in
    --rebench) rebench=1 ;;
    --synthetic) export WAN_AGENT_SOURCE=synthetic ;;
    --install-only) install_only=1 ;;
    --serve) serve=1 ;;
    --host|--port)
      [ $# -ge 2 ] || { echo "start_wan.sh: $1 needs a value" >&2; exit 2; }
      if [ "$1" = --host ]; then host="$2"; else port="$2"; fi; shift ;;
    --dev) dev=1 ;;
    --runs-dir) [ $# -ge 2 ] || { echo "start_wan.sh: --runs-dir needs a directory" >&2; exit 2; }; runs_dir="$2"; shift ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "start_wan.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    *) [ $have_prompt = 0 ] || { echo "start_wan.sh: give one prompt, in quotes" >&2; exit 2; }; prompt="$1"; have_prompt=1 ;;
  esac
  shift
done
if [ $install_only = 0 ] && [ $serve = 0 ] && [ -z "$prompt" ]; then usage >&2; exit 2; fi
command -v tmux >/dev/null || { echo "start_wan.sh: tmux is required (apt-get install tmux)" >&2; exit 2; }
# System packages the tests drive for real: dev_package COMMAND PACKAGE WHAT-FOR, installed with apt-get as root.
dev_package() {
  command -v "$1" >/dev/null && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "start_wan.sh: installing $2 for $3 (apt-get install $2)" >&2
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2"; } >/dev/null \
      || { echo "start_wan.sh: apt-get could not install $2" >&2; exit 1; }
  else
    echo "start_wan.sh: $3 need $2: apt-get install $2 (as root), then run this again" >&2; exit 2
  fi
}
if [ $dev = 1 ]; then
  dev_package chromium chromium "the report's browser tests (Playwright drives it)"
  dev_package crontab cron "the schedule's tests (they write a real crontab line and run it)"
fi

# Install once per change of pyproject.toml/constraints.txt; the stamp records what was installed.
if [ ! -x .venv/bin/python ]; then
  echo "start_wan.sh: creating .venv with $(${PYTHON:-python3} --version)" >&2
  "${PYTHON:-python3}" -m venv .venv
fi
# Extras where the GPU runs them: FP8 compute (torchao, the fp8 rungs) from compute capability 8.9 (FP8 tensor cores);
# FlashAttention-3 (fa3-fwd: the fa3-attention and fp8-attention rungs) on Hopper, compute capability 9.x.
cap="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | sort -rn | head -1 || true)"
gpu_extras=()
if [ -n "$cap" ] && awk -v c="$cap" 'BEGIN { exit !(c + 0 >= 8.9) }'; then gpu_extras+=(fp8); fi
if [ -n "$cap" ] && awk -v c="$cap" 'BEGIN { exit !(c + 0 >= 9.0 && c + 0 < 10.0) }'; then gpu_extras+=(hopper); fi
want="$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)"
for extra in "${gpu_extras[@]}"; do want="$want-$extra"; done
have="$(cat .venv/.wan-agent-installed 2>/dev/null || true)"
if [ "$have" != "$want-dev" ] && { [ $dev = 1 ] || [ "$have" != "$want" ]; }; then
  base="."; [ $dev = 1 ] && base=".[dev]"
  echo "start_wan.sh: installing wan-agent${base#.} with pinned dependencies into .venv (first time: a few minutes)" >&2
  : > .venv/.wan-agent-skipped  # what could not be installed, and why: provision records it in every run
  .venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e "$base" || exit 1
  for extra in "${gpu_extras[@]}"; do  # each on its own: one that will not install leaves the others
    echo "start_wan.sh: installing the $extra extra (GPU compute capability $cap)" >&2
    if ! .venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[$extra]"; then
      echo "start_wan.sh: the $extra extra did not install; going on without it" >&2
      echo "$extra extra: pip could not install it on this machine (compute capability $cap)" >> .venv/.wan-agent-skipped
    fi
  done
  # The official Wan2.2 code, for the tests that run its modules in this process, without its declared dependencies
  # (flash_attn is what the attention patch replaces; decord, librosa, cv2 serve pipelines never imported). Runs use
  # an environment of its own, made from locks/official.txt by provision (agent/provision/runtimes.py).
  [ $dev = 1 ] && .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -c constraints.txt wan22
  # torch must see the GPU: pip's build of it targets one CUDA version, and a driver older than that cannot run it.
  # Then the same release is tried from PyTorch's index of each CUDA build this driver runs, newest first.
  sees_gpu() { .venv/bin/python -c "import sys, torch; sys.exit(not torch.cuda.is_available())" 2>/dev/null; }
  if [ -n "$cap" ] && ! sees_gpu; then
    driver_cuda="$(nvidia-smi 2>/dev/null | sed -n 's/.*CUDA Version: *\([0-9][0-9.]*\).*/\1/p' | head -1)"
    torch_version="$(.venv/bin/python -c 'import torch; print(torch.__version__.split("+")[0])')"
    for index in $(.venv/bin/python -m agent.provision.torch_build "$driver_cuda" || true); do
      echo "start_wan.sh: torch $torch_version does not see the GPU (driver: CUDA $driver_cuda); trying $index" >&2
      if .venv/bin/python -m pip install -q --disable-pip-version-check --force-reinstall -c constraints.txt \
          --index-url "$index" --extra-index-url "${PIP_INDEX_URL:-https://pypi.org/simple}" "torch==$torch_version" && sees_gpu; then
        break
      fi
    done
    sees_gpu || echo "torch: no build of torch $torch_version runs on this driver (CUDA $driver_cuda): upgrade the NVIDIA driver" \
      >> .venv/.wan-agent-skipped
  fi
  echo "$want$([ $dev = 1 ] && echo -dev)" > .venv/.wan-agent-installed
fi
[ $install_only = 1 ] && exit 0

agent=(.venv/bin/wan-agent --runs-dir "$runs_dir")
reuse=(--reuse); [ $rebench = 1 ] && reuse=()
status=0
run_id="$("${agent[@]}" run --playbook auto "${reuse[@]}")" || status=$?
if [ $status = 3 ]; then  # converged; some verdicts were left open by a noisy host (the journal says which)
  echo "start_wan.sh: converged, but this host was too noisy to settle every verdict: see $runs_dir/$run_id/journal.md" >&2
elif [ $status != 0 ]; then
  echo "start_wan.sh: the run did not converge (exit $status); read its journal under $runs_dir/" >&2; exit $status
fi
video=""
[ -n "$prompt" ] && video="$("${agent[@]}" generate --run "$run_id" --prompt "$prompt")"
# A run reused from before reports existed has none yet.
[ -f "$runs_dir/$run_id/report.html" ] || "${agent[@]}" report "$run_id" >/dev/null
[ -n "$video" ] && echo "video:   $video"
cat <<DONE
journal: $runs_dir/$run_id/journal.md
report:  $runs_dir/$run_id/report.html
best:    $runs_dir/$run_id/best.yaml
DONE
if [ $serve = 1 ]; then
  echo "start_wan.sh: serving run $run_id on http://$host:$port/v1/videos (Ctrl-C stops)" >&2
  exec "${agent[@]}" serve --run "$run_id" --host "$host" --port "$port"
fi
