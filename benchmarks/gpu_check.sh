#!/usr/bin/env bash
# The GPU engine's figures (issue 10) in one run on a lent GPU machine: the GPU
# tests, then every arm of the BERT table (BERT-base size, random weights, UD
# EWT train documents x 3) and the ELMo arms. Each step writes its own file
# under $OUT and a failing step does not stop the next, so one run is enough.
#
# Here, once (../shared/gpu/README.md, with what this check needs and fits the device call):
#   bash benchmarks/gpu_pack.sh
# There (the device tool, carry [".gpu"]):
#   source .gpu/device-env.sh && bash benchmarks/gpu_check.sh
# If a BERT target is missed and device time is left, a short second run shows
# where the host's time goes (once with run-ahead, once without):
#   source .gpu/device-env.sh && python3 benchmarks/make_random_bert.py /tmp/b && for r in on off; do
#     python3 benchmarks/bert_speed.py --gpu --data-dir .gpu --model /tmp/b --split train --times 3 \
#       --repeats 1 --arms ctxembed --run-ahead $r --profile "${OUT:?}/prof_$r.txt"; done
set -uo pipefail
out=${OUT:-/tmp/gpu-check}
python=${PYTHON:-python3}
mkdir -p "$out"
step() {  # step NAME SECONDS COMMAND...: run with a time limit, output to $out/NAME.txt
  local name=$1 limit=$2
  shift 2
  echo "== $name ($(date -u +%T))"
  # SIGINT, not timeout's SIGTERM: pytest then still prints its summary (every failure's reason)
  timeout -s INT -k 10 "$limit" "$@" >"$out/$name.txt" 2>&1
  echo "exit $?" >>"$out/$name.txt"
  tail -n 12 "$out/$name.txt"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$out/gpu.txt" 2>&1
# What the image brings, so that a gap in it does not read as a fault of the code:
# torch.compile (the compiled ELMo test and arm) needs a C compiler and Python.h for
# Triton; an image that forces TF32 (TORCH_ALLOW_TF32_CUBLAS_OVERRIDE, as NGC's do)
# would fail every 1e-5 comparison.
{
  echo "cc: $(command -v cc gcc | head -1)"
  env | grep -i -E "tf32|cudnn|cuda_launch" || echo "no TF32/cuDNN/CUDA_LAUNCH settings in the environment"
  timeout -k 5 30 "$python" -u - <<'PY' 2>&1 | tail -n 8
import os, sysconfig, torch
print("Python.h:", os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))
print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version(),
      "cudnn sdp", torch.backends.cuda.cudnn_sdp_enabled(), "matmul", torch.get_float32_matmul_precision())
print("sdp priority (1 flash, 2 efficient, 0 math, 3 cudnn):", torch._C._get_sdp_priority_order())
x = torch.randn(8, 8, device="cuda")
print("torch.compile on cuda:", bool(torch.allclose(torch.compile(lambda t: t.sin() + 1)(x), x.sin() + 1)))
PY
} >>"$out/gpu.txt" 2>&1
cat "$out/gpu.txt"
# Step limits: 35 (the checks above) + 140 + 25 + 220 + 110 = 530 s, and up to 10 s
# more each for a step that ignores SIGINT: 570 s, which leaves the unpacking and
# nvidia-smi room under the device tool's 600 s per call.
# The GPU tests only (the CPU ones run in CI); -rA: every failure's reason even if the step is cut short.
step pytest 140 "$python" -m pytest -q -rA -p no:cacheprovider tests/test_gpu.py
step make_random_bert 25 "$python" benchmarks/make_random_bert.py /tmp/bert-base-random
# No ctxembed_65536 arm: with 23 GiB or more free, the default budget is 65,536 pieces already.
# A failing arm is reported (the tail of its output) and the others still run. The
# arms run in --arms order and each writes its figures as it ends, so a timeout
# loses the last: the issue's targets first (spacy-transformers, bound by its host
# work, last of them), the other arms after them.
step bert_speed 220 "$python" benchmarks/bert_speed.py --gpu --data-dir .gpu --model /tmp/bert-base-random \
  --split train --times 3 --bare-batch 64 --repeats 1 \
  --arms bare,ctxembed,ctxembed_bf16,ctxembed_bf16_cudnn,long,spacy_transformers_unpooled,ctxembed_tf32,ctxembed_fp16,ctxembed_32768
# The arms run in --arms order: allennlp before ctxembed_compiled, so that a
# timeout loses the compiled arm, not the comparison.
step elmo_speed 110 "$python" benchmarks/elmo_speed.py --gpu --data-dir .gpu --allennlp .gpu/allennlp \
  --arms ctxembed,allennlp,ctxembed_compiled --repeats 1 --n-sentences 2000 --no-long --allennlp-batch 64
