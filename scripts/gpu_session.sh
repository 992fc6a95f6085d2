#!/usr/bin/env bash
# Build, check and time the CUDA path on a lent GPU machine, in one call: the machine is bare and
# its time is short. Stages run in the order given (default: all); logs and reports go to $OUT.
#
#   bash scripts/gpu_session.sh setup test sanitize bench_ops bench_train profile
#
# Needs, carried with the call: .whl/ (wheels the machine's image lacks: pytorch-msssim, and
# cmake >= 4, which nvcc's C++20 needs) and .devdata/celebahq/ (the first 1024 CelebA-HQ faces at
# each size and their attributes, for bench_train and profile). Make both here, where the package
# registries and ../shared/data are, with `bash scripts/gpu_session.sh prepare`. The extension is
# built against the machine's own torch, for its GPU's architecture only.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site PATH=/tmp/site/bin:$PATH
stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(setup test sanitize bench_ops bench_train profile)

prepare() {  # here, not on the GPU machine
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_17_x86_64 -d .whl pytorch-msssim 'cmake>=4' || return 1
  local src=../shared/data/celebahq dst=.devdata/celebahq size i
  for size in 64 128 256; do
    mkdir -p "$dst/images$size"
    for i in $(seq 1 1024); do cp "$src/images$size/$i.jpg" "$dst/images$size/"; done
  done
  { echo 1024; sed -n 2,1026p "$src/CelebAMask-HQ-attribute-anno.txt"; } > "$dst/CelebAMask-HQ-attribute-anno.txt"
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

bench_ops() {
  for dtype in float32 bfloat16; do
    python3 scripts/bench_ops.py --device cuda --dtype "$dtype" --repeat 50 \
      --methods eager folded exprfast --out "$OUT" --name "ops_cuda_$dtype" || return 1
  done
}

bench_train() {
  python3 scripts/bench_train.py --device cuda --data-root .devdata/celebahq --steps 30 \
    --warmup 5 --out "$OUT" --name train_cuda
}

profile() {
  # Where one training step's time goes on this machine: torch.profiler, CPU and CUDA op tables.
  for preset in fader paper; do
    python3 -P - "$preset" <<'PY'
import sys, torch
from torch.profiler import profile, ProfilerActivity
from exprfast.training import Trainer, TrainConfig, open_datasets
config = TrainConfig(data_root=".devdata/celebahq", img_size=128, limit=1024, preset=sys.argv[1],
                     precision="fp32", batch_size=32, device="cuda", channels_last=True, progress=False)
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
