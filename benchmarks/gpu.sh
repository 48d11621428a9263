#!/usr/bin/env bash
# The GPU figures of the README from one device call: `bash benchmarks/gpu.sh [PART ...]`, PART of
#   attention   benchmarks/attention_check.py: is cuDNN flash attention selected, does it match XLA (no bias,
#               vid-TLDR's per-key log-mass bias, BERT's padding mask), fwd+bwd times (~1.5 min);
#   train_step  benchmarks/train_step.py: B/16 stage 1 at 8×224², bf16, attention auto (cuDNN), per-device batch
#               64: step time, clips/s, MFU, with attention xla, remat full and batch 128 beside it (~4 min);
#   merging     benchmarks/merging.py: B/16 inference clips/s with and without vid-TLDR / ToMe, bf16 (~2.5 min);
#   vs_pytorch  benchmarks/vs_pytorch.py on the GPU: the stage-1 step and classifier forward against PyTorch
#               eager under bf16 autocast, S/16 and B/16 at 8×224² (~2 min);
# default: all four (about 10 minutes: keep timeout_s at 600, or split the parts over two calls). Each part has
# its own time limit and writes a table under $OUT (default /tmp/gpu_out).
#
# The device image has jax with CUDA, flax, optax, orbax and torch, not the rest of setup.py: fetch those wheels
# here first (the device machine has no network), into the git-ignored .whl/:
#   bash benchmarks/gpu.sh wheels
# then run on the device with carry [".whl"] and the command `bash benchmarks/gpu.sh` (timeout_s 600).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}  # on the device image, python3 is the one with jax and torch
WHEELS="grain==0.2.18 array-record==0.8.6 ml-collections==1.1.0 simplejpeg==1.9.0 tensorboardX==2.6.5
        portpicker==1.6.0 importlib_resources==7.1.0"
if [ "${1:-}" = "wheels" ]; then
  grep -qx "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >> .git/info/exclude
  # shellcheck disable=SC2086
  exec python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -d .whl $WHEELS
fi
ALL="attention train_step merging vs_pytorch"
PARTS=${*:-$ALL}
for part in $PARTS; do
  [[ " $ALL " == *" $part "* ]] || { echo "benchmarks/gpu.sh: unknown part $part; expected wheels or some of $ALL" >&2
                                     exit 2; }
done
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
if [ -d .whl ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1
{ nvidia-smi -L; $PY -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__,
  'optax', optax.__version__, jax.devices())"; } 2>&1 | tee "$OUT/device.txt"
for part in $PARTS; do
  case $part in
    attention) timeout 100 $PY -m benchmarks.attention_check --runs 10 2>&1 | tee "$OUT/attention.md" ;;
    train_step) timeout 260 $PY -m benchmarks.train_step --config=configs/umt_k710.py:B --config.batch_size=64 \
        --config.data.workers=0 --steps 10 --warmup 2 --sweep model.attn_impl=xla --sweep model.remat=full \
        --sweep batch_size=128 2>&1 | grep -v "^W0000\|^I0000" | tee "$OUT/train_step.md" ;;
    merging) timeout 150 $PY -m benchmarks.merging --dtype bfloat16 --attn_impl auto --batch_sizes 32,128 \
        --runs 5 --out "$OUT/merging.json" 2>&1 | tee "$OUT/merging.md" ;;
    vs_pytorch) XLA_PYTHON_CLIENT_PREALLOCATE=false timeout 120 $PY -m benchmarks.vs_pytorch --device cuda \
        --dtype bfloat16 --configs s224,b224 --rounds 3 --steps 5 2>&1 | tee "$OUT/vs_pytorch.md" ;;
  esac
done
