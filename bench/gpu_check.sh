#!/usr/bin/env bash
# The GPU path in one go, on a machine with a CUDA GPU (the development machine has none; issue 20.3).
#
#   bash bench/gpu_check.sh [STORAGE]        # default: a new folder under $TMPDIR; everything goes there
#
# Runs the product's own commands and prints one PASS/FAIL line per check, then a summary; exit 1 if any failed:
#   cuda        torch sees a GPU (and whether it runs bf16)
#   tiny-bf16   a tiny-model `train` trial on the GPU with bf16 autocast (fp16 where bf16 is not native)
#   tiny-fp16   the same with fp16 autocast (the GradScaler path)
#   minilm      a MiniLM trial on the GPU (precision auto: bf16, else fp16); needs the model cached or the hub
#   share       `train --seeds 2 --gpus-per-worker 0.5`: both trials end, each held half a GPU, ran at once
#   cpu-only    `--gpus-per-worker 0` on this GPU machine: the trial holds no GPU and never touches it
#   dry-run     `sweep --dry-run --gpus-per-worker 0.5` shows 0.5 GPU per worker
#   pytest      tests/search/test_gpu_resources.py, with its CUDA test not skipped
# "on the GPU" is measured, not assumed: nvidia-smi is sampled every second while a command runs.
set -u
cd "$(dirname "$0")/.."
ST="${1:-$(mktemp -d "${TMPDIR:-/tmp}/bam-gpu-check.XXXXXX")}"
mkdir -p "$ST"
export WANDB_MODE=offline
FAILS=0
pass() { echo "PASS $1: $2"; }
fail() { echo "FAIL $1: $2"; FAILS=$((FAILS + 1)); }

if ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    fail cuda "torch.cuda.is_available() is False: no GPU to check on this machine"; exit 1
fi
BF16=$(python -c "import torch; print(int(torch.cuda.is_bf16_supported()))")
pass cuda "$(python -c "import torch; print(torch.cuda.get_device_name(0), '- bf16:', torch.cuda.is_bf16_supported())")"
HALF=$([ "$BF16" = 1 ] && echo bf16 || echo fp16)

# watch LOG CMD...: runs CMD with nvidia-smi sampled every second; LOG gets "<processes on the GPU>" per sample
watch() {
    local log="$1"; shift
    : > "$log"
    ( while true; do nvidia-smi --query-compute-apps=pid --format=csv,noheader 2>/dev/null | wc -l >> "$log"
                     sleep 1; done ) &
    local watcher=$!
    "$@" > "$log.out" 2>&1
    local rc=$?
    kill "$watcher" 2>/dev/null; wait "$watcher" 2>/dev/null
    return $rc
}
BASE=$(nvidia-smi --query-compute-apps=pid --format=csv,noheader 2>/dev/null | wc -l)   # others' processes
most() { echo $(( $(sort -n "$1" | tail -1) - BASE )); }   # most processes of ours seen on the GPU at once

recipe() {   # recipe FILE MODEL PRECISION
    cat > "$1" <<EOF
tasks: [syn_sentiment, syn_pairmatch]
model: $2
precision: $3
teacher: {use: false}
evals: 2
optim: {epochs: 1}
data: {max_train_examples: 400, max_dev_examples: 200, max_length: 64}
EOF
}

trial() {    # trial NAME MODEL PRECISION [extra flags]: one `train` trial, on the GPU
    local name="$1" model="$2" prec="$3"; shift 3
    recipe "$ST/$name.yaml" "$model" "$prec"
    if watch "$ST/$name.gpu" bam-search train "$ST/$name.yaml" --seeds 1 --quiet --no-wandb --storage "$ST" \
             --name "$name" "$@"; then
        if [ "$(most "$ST/$name.gpu")" -ge 1 ]; then pass "$name" "$model, precision $prec, on the GPU"
        else fail "$name" "ended, but no process was seen on the GPU (nvidia-smi)"; fi
    else
        fail "$name" "exit $? (log: $ST/$name.gpu.out): $(tail -1 "$ST/$name.gpu.out")"
    fi
}

trial tiny-bf16 tiny "$HALF"
trial tiny-fp16 tiny fp16
trial minilm minilm auto

# two trials share one GPU
recipe "$ST/share.yaml" tiny auto
if watch "$ST/share.gpu" bam-search train "$ST/share.yaml" --seeds 2 --gpus-per-worker 0.5 --quiet --no-wandb \
         --storage "$ST" --name share; then
    why=$(python - "$ST/experiments/share" <<'EOF'
import json, sys
from pathlib import Path
trials = [d for d in Path(sys.argv[1]).iterdir() if (d / "params.json").exists()]
spans, why = [], []
for d in trials:
    res = json.loads((d / "params.json").read_text())["resources"]
    if res.get("gpus_per_worker") != 0.5 or not res.get("use_gpu"):
        why.append(f"{d.name} held {res}")
    rows = [json.loads(l) for l in (d / "result.json").read_text().splitlines()]
    spans.append((rows[0]["timestamp"] - rows[0]["time_total_s"], rows[-1]["timestamp"]))
if len(trials) != 2:
    why.append(f"{len(trials)} trials, not 2")
elif max(s for s, _ in spans) >= min(e for _, e in spans):
    why.append("the two trials did not run at the same time")
print("; ".join(why))
EOF
)
    if [ -n "$why" ]; then fail share "$why"
    elif [ "$(most "$ST/share.gpu")" -lt 2 ]; then fail share "never two processes on the GPU at once (nvidia-smi)"
    else pass share "2 trials x 0.5 GPU, at the same time on one GPU"; fi
else
    fail share "exit $? (log: $ST/share.gpu.out): $(tail -1 "$ST/share.gpu.out")"
fi

# CPU only on a GPU machine
recipe "$ST/cpu.yaml" tiny auto
if watch "$ST/cpu.gpu" bam-search train "$ST/cpu.yaml" --seeds 1 --gpus-per-worker 0 --quiet --no-wandb \
         --storage "$ST" --name cpu-only; then
    held=$(python -c "import json,glob; print(json.load(open(glob.glob('$ST/experiments/cpu-only/*/params.json')[0]))['resources']['use_gpu'])")
    if [ "$held" = False ] && [ "$(most "$ST/cpu.gpu")" -eq 0 ]; then pass cpu-only "no GPU held, none touched"
    else fail cpu-only "use_gpu $held, at most $(most "$ST/cpu.gpu") processes on the GPU"; fi
else
    fail cpu-only "exit $? (log: $ST/cpu.gpu.out): $(tail -1 "$ST/cpu.gpu.out")"
fi

out=$(bam-search sweep spaces/smoke.yaml --tasks syn_sentiment --model tiny --set teacher.use=false \
      --gpus-per-worker 0.5 --storage "$ST" --dry-run 2>&1)
if echo "$out" | grep -q "+ 0.5 GPU"; then pass dry-run "$(echo "$out" | grep 'resources per trial')"
else fail dry-run "no '+ 0.5 GPU' in: $(echo "$out" | tail -3 | tr '\n' ' ')"; fi

if python -m pytest -q -p no:cacheprovider tests/search/test_gpu_resources.py -rs > "$ST/pytest.out" 2>&1 \
        && ! grep -q "SKIPPED" "$ST/pytest.out"; then
    pass pytest "$(tail -1 "$ST/pytest.out")"
else
    fail pytest "$(grep -E 'SKIPPED|FAILED|passed|failed' "$ST/pytest.out" | tail -2 | tr '\n' ' ') (log: $ST/pytest.out)"
fi

echo "gpu check: $FAILS failed; everything under $ST"
[ "$FAILS" -eq 0 ]
