#!/usr/bin/env bash
# The GPU measurements issue 5 asks for, in three device calls of a few minutes each (the
# device tool allows 10 minutes per command):
#
#   bash benchmarks/gpu_session.sh fp16 OUT   # throughput.py --precision 16-mixed
#   bash benchmarks/gpu_session.sh bf16 OUT   # throughput.py bf16-mixed (+ channels-last), metrics.py
#   bash benchmarks/gpu_session.sh amp OUT    # amp_check.py: every experiment under 16-mixed
#   bash benchmarks/gpu_session.sh data OUT   # data.py: DataModule images/s, raw and cached
#
# Run from the repository root on a CUDA machine. Results land in OUT (markdown tables and
# logs). Python packages the machine lacks can travel as wheels in .whl/ (benchmarks/README.md,
# "Running the GPU part"); they are installed to /tmp/site first. The MNIST IDX files for
# cyclegan_mnist_inverted are read from .gpu-data/mnist if present.
#
# GPU_SESSION_DRY_RUN=1 runs the same steps on the CPU at toy sizes (bf16-mixed for 16-mixed,
# two experiments), so the script itself is tested without a GPU (tests/test_benchmarks.py).
# GPU_SESSION_MODELS=dcgan,vae limits the throughput tables to those models (a rerun when the
# device time left is short).
set -uo pipefail
part=${1:?usage: gpu_session.sh fp16|bf16|amp|data OUT}
out=${2:?usage: gpu_session.sh fp16|bf16|amp|data OUT}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python=${PYTHON:-python3}
if compgen -G ".whl/*.whl" >/dev/null; then
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi

if [ "${GPU_SESSION_DRY_RUN:-0}" = 1 ]; then
  device=(--device cpu --width 4 --batch-size 2 --steps 2 --repeats 1)
  fp16=bf16-mixed  # float16 autocast needs CUDA
  metrics=(--device cpu --num_images 4 --batch_size 4 --repeats 1)
  amp=(--precision bf16-mixed --accelerator cpu --steps 4 --batch_size 8 --jobs 1
       --experiments dcgan_mnist,cyclegan_mnist_inverted)
  data=(--workers 1 --seconds 0.2 --celeba-images 40 --mnist-images 300 --cifar-per-batch 40)
else
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv \
    2>&1 | tee "$out/env.txt"
  device=(--device cuda --repeats 3)
  fp16=16-mixed
  metrics=(--device cuda)
  amp=(--precision 16-mixed --steps 300 --jobs 4)
  cores=$(nproc); data=(--workers $((cores < 8 ? cores : 8)) --seconds 5 --celeba-images 20000)
fi
"$python" -c "import torch, lightning; print('torch', torch.__version__, '| cuda', torch.version.cuda,
'| lightning', lightning.__version__, '|', torch.cuda.get_device_name() if torch.cuda.is_available()
else 'no GPU')" 2>&1 | tee -a "$out/env.txt"

models=()
[ -n "${GPU_SESSION_MODELS:-}" ] && models=(--models "$GPU_SESSION_MODELS")
status=0
case "$part" in
  fp16)
    "$python" benchmarks/throughput.py "${device[@]}" "${models[@]}" --precision "$fp16" --lightning all \
      2>"$out/throughput-$fp16.log" | tee "$out/throughput-$fp16.md" || status=1
    ;;
  bf16)
    "$python" benchmarks/throughput.py "${device[@]}" "${models[@]}" --precision bf16-mixed --lightning all \
      2>"$out/throughput-bf16-mixed.log" | tee "$out/throughput-bf16-mixed.md" || status=1
    "$python" benchmarks/throughput.py "${device[@]}" "${models[@]}" --precision bf16-mixed --channels-last \
      --lightning bare 2>"$out/throughput-bf16-cl.log" \
      | tee "$out/throughput-bf16-mixed-channels-last.md" || status=1
    "$python" benchmarks/metrics.py "${metrics[@]}" 2>&1 | tee "$out/metrics.md" || status=1
    ;;
  amp)
    mnist=()
    [ -d .gpu-data/mnist ] && mnist=(--mnist_dir .gpu-data/mnist)
    runs=$(mktemp -d "${TMPDIR:-/tmp}/amp-runs-XXXX")
    "$python" benchmarks/amp_check.py "${amp[@]}" --compare "${mnist[@]}" --workdir "$runs" \
      2>&1 | tee "$out/amp.md" || status=1
    # The end of each failing run's output, for the note.
    for f in "$runs"/*/output.txt; do
      if grep -q "Error" "$f" 2>/dev/null; then
        tail -n 20 "$f" >"$out/failed-$(basename "$(dirname "$f")").txt"
      fi
    done
    ;;
  data)
    "$python" benchmarks/data.py "${data[@]}" 2>"$out/data.log" | tee "$out/data.md" || status=1
    ;;
  *) echo "unknown part $part (fp16|bf16|amp|data)"; exit 2 ;;
esac
exit $status
