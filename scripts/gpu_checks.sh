#!/usr/bin/env bash
# The GPU checks, in one run on a CUDA machine: the CUDA tests (with PyTorch's detector of synchronising
# CUDA calls in the training step), bench_throughput (segbench-train end to end at the paper's settings:
# images/s and the share of time the GPU is busy, bf16 with and without torch.compile, segbench's U-Net and
# MONAI's BasicUNet), bench_paths (the same end to end for segbench's U-Net, data.pipeline=device against
# data.pipeline=loader with the auto worker count), bench_losses (every loss beside MONAI, 2D and 3D), bench_metrics (the CUDA path, its
# agreement with the CPU path to 1e-6 mm, MONAI beside it), bench_edt (the EDT kernels and the boundary
# losses) and bench_models. Under 10 minutes (the step limits add up to 580 s; a device run may take
# 600 s); a failed or timed-out step does not stop the others, and the tables print row by row, so a step
# cut short keeps the rows it finished. Tables go to $OUT (default gpu_checks/): one .md per step and one
# log of everything.
#
#   bash scripts/gpu_checks.sh --fetch-wheels   # here, with pip: wheels of what a bare CUDA image lacks
#                                               # (MONAI, nibabel, Hydra) into .whl/ (git-ignored)
#   bash scripts/gpu_checks.sh                  # there: installs .whl/ if present, then runs the checks
#   DEVICE=cpu QUICK=1 bash scripts/gpu_checks.sh   # a dry run of the script itself on a CPU
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--fetch-wheels" ]; then
  set -e
  mkdir -p .whl
  py=${WHEEL_PYTHON:-3.12}  # the CUDA image's python3
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$py" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "monai==1.6.1" "nibabel==5.4.2" "hydra-core==1.3.8" "omegaconf==2.3.1"
  python3 -m pip wheel -q --no-deps -w .whl "antlr4-python3-runtime==4.9.3"  # sdist only: build it here
  ls -1 .whl
  exit 0
fi

out=${OUT:-gpu_checks}
device=${DEVICE:-cuda}
mkdir -p "$out"
log="$out/gpu_checks.log"
: > "$log"
if ls .whl/*.whl > /dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/segbench-site \
    .whl/*.whl >> "$log" 2>&1 || { echo "gpu_checks: installing .whl/ failed, see $log"; exit 1; }
  export PYTHONPATH="/tmp/segbench-site:$PWD"
else
  export PYTHONPATH="$PWD"
fi
export PYTHONUNBUFFERED=1
if [ "$device" = cuda ]; then
  python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || {
    echo "gpu_checks: torch sees no CUDA device; run this on a GPU machine (DEVICE=cpu for a dry run)"; exit 1; }
  nvidia-smi >> "$log" 2>&1
fi
python3 -c "import torch, monai; print('torch', torch.__version__, 'monai', monai.__version__)" >> "$log" 2>&1

# both end-to-end steps train on one phantom (generated and preprocessed once, by the first), kept out of $out
data_args=(--data-dir "${TMPDIR:-/tmp}/segbench_gpu_checks_data")
# data.pipeline=device against the loader path with data.num_workers=auto, segbench's U-Net, no compile
paths_args=(--models unet --compile no --pipelines loader,device)
if [ -n "${QUICK:-}" ]; then
  throughput_args=(--quick --models unet,basic_unet --compile yes)  # the compiled path includes the plain one
  paths_args+=(--quick)
  losses_args=(--losses dice,boundary --shapes 2d --repeats 1 --warmup 0)
  metrics_args=(--shape 32 128 128 --no-medpy --no-monai --repeats 1)
  edt_args=(--shapes 2d --repeats 1 --losses --only boundary)
  models_args=(--models unet --dims 2 --size-2d 64 --repeats 1 --warmup 0)
  tests=(tests/test_edt.py tests/test_host_sync.py::test_a_step_that_reads_its_loss_is_caught
         tests/test_device_pipeline.py::test_2d_device_batches_equal_monai_for_the_same_draws)
else
  throughput_args=()   # 16 phantom cases at 224 px, 10 + 30 + 8 steps per row (one epoch), 4 rows
  losses_args=(--repeats 3 --warmup 1)  # MONAI's HausdorffDTLoss alone takes ~4 s a call
  metrics_args=(--no-medpy --repeats 3)
  edt_args=(--repeats 3 --losses)
  models_args=(--repeats 3)
  tests=(tests/test_metrics_torch.py tests/test_edt.py tests/test_loss_maps.py tests/test_losses_boundary.py
         tests/test_host_sync.py tests/test_device_pipeline.py::test_device_batches_on_cuda_match_the_cpu)
fi
if [ "$device" = cpu ]; then
  throughput_args+=(--device cpu --compile-backend eager)  # the dry run: dynamo without a C++ build
  paths_args+=(--device cpu)
fi

# The limits below fit the GPU run's 600 s. A CPU dry run scales them (LIMIT_SCALE, default 6 on a CPU): the
# same steps on a 2-core CPU that is busy with other work take several times longer.
if [ "$device" = cpu ]; then scale=${LIMIT_SCALE:-6}; else scale=${LIMIT_SCALE:-1}; fi
failed=0
step() {  # step NAME LIMIT_S COMMAND...: stdout -> $out/NAME.md, stderr -> the log
  local name=$1 limit=$(($2 * scale))
  shift 2
  local start=$SECONDS
  echo "== $name: $*" | tee -a "$log"
  timeout "$limit" "$@" > "$out/$name.md" 2>> "$log"
  local rc=$?
  echo "== $name: rc=$rc, $((SECONDS - start)) s" | tee -a "$log"
  [ "$rc" -eq 0 ] || failed=1
}

step tests 90 python3 -m pytest -q -p no:cacheprovider "${tests[@]}"
step bench_throughput 160 python3 scripts/bench_throughput.py "${throughput_args[@]}" "${data_args[@]}"
step bench_paths 60 python3 scripts/bench_throughput.py "${paths_args[@]}" "${data_args[@]}"
step bench_losses 110 python3 scripts/bench_losses.py --device "$device" "${losses_args[@]}"
step bench_metrics 50 python3 scripts/bench_metrics.py "${metrics_args[@]}"
step bench_edt 50 python3 scripts/bench_edt.py --devices "$device" "${edt_args[@]}"
step bench_models 60 python3 scripts/bench_models.py --device "$device" "${models_args[@]}"
exit "$failed"
