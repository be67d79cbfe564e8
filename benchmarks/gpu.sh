#!/usr/bin/env bash
# The GPU check, one prepared script (about 8 minutes on one modern GPU; nothing is downloaded):
#
#   bash benchmarks/gpu.sh [output directory, default /tmp/sskt_gpu]
#
# 1. The throughput table (benchmarks/throughput.py) three times: float32 without XLA, float32 with
#    XLA, and XLA with mixed bfloat16 and the sources in bfloat16; the PyTorch way beside the first.
# 2. The wall time of a 200-epoch CIFAR-10 SSKT run (ResNet-20, one ResNet-50 source at 74 px, batch
#    128: flags/cifar10_resnet20_imagenet.cfg), estimated from a timed epoch of 390 steps on synthetic
#    32x32 images (same shapes and cost; random source weights cost what ImageNet weights do), with
#    XLA and mixed bfloat16, live sources and --soft_label_cache=replay.
#
# Every figure is printed and kept under the output directory.
set -euo pipefail
out=${1:-/tmp/sskt_gpu}
mkdir -p "$out"
cd "$(dirname "$0")/.."
export TF_CPP_MIN_LOG_LEVEL=2
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt" || true

table() {  # name, then throughput.py flags
  local name=$1; shift
  echo "== throughput: $name"
  python benchmarks/throughput.py --steps=20 --warmup=5 --repeats=3 "$@" 2>"$out/throughput_$name.err" | tee "$out/throughput_$name.txt"
}
table float32 --jit_compile=false
table xla --jit_compile=true --torch=false
table xla_bf16 --jit_compile=true --precision=mixed_bfloat16 --source_precision=bfloat16 --torch=false

epoch() {  # name, then training flags
  local name=$1; shift
  local dir="$out/run_$name"
  rm -rf "$dir"
  python -m sskt_tf.train --config=cifar10_resnet20_imagenet --dataset=synthetic --sources=resnet50:random \
    --epochs=2 --steps_per_epoch=390 --jit_compile=true --precision=mixed_bfloat16 --source_precision=bfloat16 \
    --lr_schedule=constant --verbose=2 --output_dir="$dir" "$@" >"$dir.log" 2>&1 || { tail -5 "$dir.log"; return 1; }
  python - "$dir" "$name" <<'EOF'
import csv, json, sys
run, name = sys.argv[1], sys.argv[2]
rows = list(csv.DictReader(open(f"{run}/metrics.csv")))
ips = float(rows[-1]["images_per_second"])  # The second epoch: tracing and compilation are over.
seconds = 200 * 50000 / ips
print(f"{name}: {ips:,.0f} training images/s in epoch 2 -> 200 epochs of CIFAR-10 (50,000 images) "
      f"in about {seconds / 3600:.2f} h of training steps (evaluation and the replay fill not included)")
EOF
}
echo "== 200-epoch estimate (XLA, mixed bfloat16, sources in bfloat16)"
epoch live | tee "$out/estimate.txt"
epoch replay --soft_label_cache=replay | tee -a "$out/estimate.txt"
grep -h "computing\|views per image" "$out/run_replay.log" | tee -a "$out/estimate.txt" || true
