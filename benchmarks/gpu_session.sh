#!/usr/bin/env bash
# Issue #16's GPU checks as one prepared command, for a session that is lent a GPU (the `device`
# tool's `run`; its H200 image has torch, timm, opencv, scipy, click, tqdm, safetensors and pyyaml
# but not pydensecrf, so the suite leaves out its CPU-only IR-label row and says so):
#
#     PYTHONUNBUFFERED=1 bash benchmarks/gpu_session.sh          # run with timeout_s 600
#
# It writes under $OUT (the device's return folder; default gpu_session/), at most 6 files:
#   env.txt       nvidia-smi, torch and CUDA versions
#   cam_ratio.md  AD-CAM against CAM, S/16 at 375x500 with IRN's scales, taking turns (item 2: 1.2x)
#   suite.md      the suite's table (item 1; with the batched and --amp rows of item 3)
#   suite.json    its rows, written after every group, so a run stopped at the time limit keeps them
#   budget.md     the VOC time budget from them (item 4); FALLBACK=cpu_suite.json fills the rows
#                 the GPU run lacks (the IR labels) from a CPU run's JSON
#   log.txt       what the scripts printed on stderr
# The same at smoke size, on a CPU, is what tests/test_benchmarks.py runs:
#     DEVICE=cpu PROFILE=smoke CAM_ARGS="--model conformer_tiny --images 1 --size 48 64" OUT=/tmp/x bash benchmarks/gpu_session.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_session}
DEVICE=${DEVICE:-cuda}
PROFILE=${PROFILE:-full}
PY=${PYTHON:-python3}
CAM_ARGS=${CAM_ARGS:---model conformer_s16 --images 4}
SUITE_LIMIT=${SUITE_LIMIT:-470}  # seconds: the suite's goal is 8 minutes; the command's limit is 10
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT"
status=0
{
    nvidia-smi 2>&1 || echo "no nvidia-smi"
    "$PY" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'GPU', torch.cuda.is_available())"
} > "$OUT/env.txt" 2>&1
# shellcheck disable=SC2086  # CAM_ARGS is a list of options
"$PY" benchmarks/bench_cam_methods.py $CAM_ARGS --methods cam adcam --rounds 2 --no-memory --device "$DEVICE" \
    > "$OUT/cam_ratio.md" 2>> "$OUT/log.txt" || status=1
# shellcheck disable=SC2086  # SUITE_ONLY: group names, e.g. "eval pseudo" (default: all)
timeout "$SUITE_LIMIT" "$PY" benchmarks/suite.py --device "$DEVICE" --profile "$PROFILE" --out "$OUT/suite.md" \
    --json "$OUT/suite.json" ${SUITE_ONLY:+--only $SUITE_ONLY} > /dev/null 2>> "$OUT/log.txt" || status=1
if [ -f "$OUT/suite.json" ]; then
    "$PY" benchmarks/voc_budget.py "$OUT/suite.json" --workers 16 --out "$OUT/budget.md" \
        ${FALLBACK:+--fallback "$FALLBACK"} > /dev/null 2>> "$OUT/log.txt" || status=1
fi
cat "$OUT/cam_ratio.md" "$OUT/suite.md" 2>/dev/null
exit $status
