#!/usr/bin/env bash
# Build, check and time the CUDA path on a lent GPU machine, in one call: the machine is bare and
# its time is short. Stages run in the order given (default: all); logs and reports go to $OUT.
#
#   bash scripts/gpu_session.sh setup test recipe bench_ops bench_train profile sanitize
#
# Needs, carried with the call: .whl/ (wheels the machine's image lacks: pytorch-msssim, and
# cmake >= 4, which nvcc's C++20 needs) and .devdata/celebahq/ (the first 512 CelebA-HQ faces at
# each size and their attributes, for recipe, bench_train and profile: with the 30 MB cmake wheel
# and the repository, more would pass the 64 MiB a call may carry). Make both here, where the
# package registries and ../shared/data are, with `bash scripts/gpu_session.sh prepare`. The
# extension is built against the machine's own torch, for its GPU's architecture only.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site PATH=/tmp/site/bin:$PATH
stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(setup test recipe bench_ops bench_train profile sanitize)
IMAGES=512

prepare() {  # here, not on the GPU machine
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_17_x86_64 -d .whl pytorch-msssim 'cmake>=4' || return 1
  local src=../shared/data/celebahq dst=.devdata/celebahq size i
  for size in 64 128 256; do
    mkdir -p "$dst/images$size"
    for i in $(seq 1 $IMAGES); do cp "$src/images$size/$i.jpg" "$dst/images$size/"; done
  done
  { echo $IMAGES; sed -n "2,$((IMAGES + 2))p" "$src/CelebAMask-HQ-attribute-anno.txt"; } > "$dst/CelebAMask-HQ-attribute-anno.txt"
  grep -qx "/.devdata/" "$(git rev-parse --git-path info/exclude)" \
    || echo "/.devdata/" >> "$(git rev-parse --git-path info/exclude)"
}

setup() {
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || return 1
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
  cmake --version | head -1; nvcc --version | tail -2
  local arch
  arch=$(python3 -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
  TORCH_CUDA_ARCH_LIST=$arch python3 -m pip install -q --no-deps --no-build-isolation . \
    -C build-dir=build/gpu -C cmake.define.EXPRFAST_CUDA=ON 2>&1 | tail -30 || return 1
  python3 -P -c "import exprfast; print(exprfast.backend_info())"
}

test() {
  # Every test parametrized over devices runs on both; the rest of these files runs as on CI.
  python3 -P -m pytest -q -rs -p no:cacheprovider -n 8 \
    tests/test_op.py tests/test_cuda_bodies.py tests/test_nn.py tests/test_models.py
}

sanitize() {
  # memcheck over the CUDA tests of the op: out-of-bounds or misaligned accesses, bad launches.
  timeout 150 compute-sanitizer --tool memcheck --error-exitcode 9 \
    python3 -P -m pytest -q -p no:cacheprovider tests/test_op.py -k cuda -x
}

recipe() {
  # The README's recipe on CUDA, briefly: the base model (paper preset + classifier loss, bf16)
  # run, stopped and resumed; the mouth-refiner stage (fp16 autocast + grad scaler) from the
  # bundled model; then the bundled model's edits on CUDA against the CPU.
  local runs=/tmp/runs common=(--img-size 128 --attrs Smiling --data-root .devdata/celebahq
    --device cuda --checkpoint-every 100 --val-every 100 --sample-every 100)
  local base=("${common[@]}" --preset paper --lambda-lat 0.01 --lambda-ramp-steps 1000
    --lambda-clf 0.05 --precision bf16 --run-dir $runs/base)
  python3 scripts/train_fast.py "${base[@]}" --steps 200 || return 1
  python3 scripts/train_fast.py "${base[@]}" --steps 300 --resume auto || return 1
  python3 scripts/train_fast.py "${common[@]}" --init-from exprfast/pretrained/smiling.pt \
    --mouth-refiner 24 --refiner-coupled Mouth_Slightly_Open --refiner-cycle 0.5 --batch-size 16 \
    --precision fp16 --steps 200 --run-dir $runs/refiner || return 1
  python3 - $runs <<'PY'
import json, sys
from pathlib import Path
for run in ("base", "refiner"):
    records = [json.loads(line) for line in (Path(sys.argv[1]) / run / "metrics.jsonl").open()]
    rates = [(r["step"], round(r["samples_per_s"], 1)) for r in records if "samples_per_s" in r]
    last = {k: v for k, v in records[-1].items() if isinstance(v, (int, float))}
    print(run, "samples/s by step:", rates, "\n  last record:", last)
PY
  # Aligned faces, so no face detector is needed: the image's OpenCV 5 ships no Haar cascade.
  python3 -P - <<'PY'
import numpy as np, torch
from PIL import Image
import exprfast
faces = np.stack([np.asarray(Image.open(f".devdata/celebahq/images128/{i}.jpg"))
                  for i in range(1, 17)])
devices = ("cpu", "cuda") if torch.cuda.is_available() else ("cpu", "cpu")
editors = {d: exprfast.load(device=d) for d in devices}
edits = [editors[d].edit(faces, {"Smiling": 1.5}, paste=paste).astype(np.int16)
         for paste in ("replace", "hybrid") for d in devices]
for paste, (a, b) in zip(("replace", "hybrid"), (edits[:2], edits[2:])):
    d = np.abs(a - b)
    print(f"edit ({paste}) of 16 faces, {devices[1]} vs cpu: max {d.max()} levels, "
          f"mean {d.mean():.4f}, > 2 levels {100 * (d > 2).mean():.3f} % of values")
PY
}

bench_ops() {
  for dtype in float32 bfloat16; do
    python3 scripts/bench_ops.py --device cuda --dtype "$dtype" --repeat 50 \
      --methods eager folded exprfast --out "$OUT" --name "ops_cuda_$dtype" || return 1
  done
}

bench_train() {
  python3 scripts/bench_train.py --device cuda --data-root .devdata/celebahq --limit $IMAGES \
    --steps 30 --warmup 5 --out "$OUT" --name train_cuda
}

profile() {
  # Where one training step's time goes on this machine: torch.profiler, CPU and CUDA op tables.
  for preset in fader paper; do
    python3 -P - "$preset" "$IMAGES" <<'PY'
import sys, torch
from torch.profiler import profile, ProfilerActivity
from exprfast.training import Trainer, TrainConfig, open_datasets
config = TrainConfig(data_root=".devdata/celebahq", img_size=128, limit=int(sys.argv[2]),
                     preset=sys.argv[1], precision="fp32", batch_size=32, device="cuda",
                     channels_last=True, progress=False)
trainer = Trainer(config, open_datasets(config)[0], torch.device("cuda"))
for _ in range(5):
    trainer.train_step()
torch.cuda.synchronize()
with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
    for _ in range(5):
        trainer.train_step()
    torch.cuda.synchronize()
print("=====", sys.argv[1])
print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18, max_name_column_width=50))
print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=12, max_name_column_width=50))
PY
  done
}

status=0
for stage in "${stages[@]}"; do
  echo "=== $stage"
  start=$SECONDS
  "$stage" 2>&1 | tee -a "$OUT/session.log"  # one log: the device returns at most 8 files
  rc=${PIPESTATUS[0]}
  echo "=== $stage: exit $rc in $((SECONDS - start)) s"
  [ "$rc" -ne 0 ] && status=$rc
  [ "$stage" = setup ] && [ "$rc" -ne 0 ] && exit "$rc"
done
exit "$status"
