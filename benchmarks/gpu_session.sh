#!/usr/bin/env bash
# The GPU measurements issue 5 asks for, in as few device calls as possible.
#
#   bash benchmarks/gpu_session.sh throughput OUT   # ~5 min: both precisions, + metrics.py
#   bash benchmarks/gpu_session.sh amp OUT          # ~6-8 min: every experiment under 16-mixed
#
# Run from the repository root on a CUDA machine. Results land in OUT (markdown tables and
# logs). Python packages the machine lacks can travel as wheels in .whl/ (benchmarks/README.md,
# "Running the GPU part"); they are installed to /tmp/site first. The MNIST IDX files for
# cyclegan_mnist_inverted are read from .gpu-data/mnist if present.
#
# GPU_SESSION_DRY_RUN=1 runs the same steps on the CPU at toy sizes (bf16-mixed for 16-mixed,
# two experiments), so the script itself is tested without a GPU (tests/test_benchmarks.py).
set -uo pipefail
part=${1:?usage: gpu_session.sh throughput|amp OUT}
out=${2:?usage: gpu_session.sh throughput|amp OUT}
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
  precisions=(bf16-mixed)
  metrics=(--device cpu --num_images 4 --batch_size 4 --repeats 1)
  amp=(--precision bf16-mixed --accelerator cpu --steps 4 --batch_size 8
       --experiments dcgan_mnist,cyclegan_mnist_inverted)
else
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv \
    2>&1 | tee "$out/env.txt"
  device=(--device cuda --repeats 3)
  precisions=(16-mixed bf16-mixed)
  metrics=(--device cuda)
  amp=(--precision 16-mixed --steps 300)
fi
"$python" -c "import torch, lightning; print('torch', torch.__version__, '| cuda', torch.version.cuda,
'| lightning', lightning.__version__, '|', torch.cuda.get_device_name() if torch.cuda.is_available()
else 'no GPU')" 2>&1 | tee -a "$out/env.txt"

status=0
case "$part" in
  throughput)
    for precision in "${precisions[@]}"; do
      "$python" benchmarks/throughput.py "${device[@]}" --precision "$precision" --lightning all \
        2>"$out/throughput-$precision.log" | tee "$out/throughput-$precision.md" || status=1
    done
    "$python" benchmarks/throughput.py "${device[@]}" --precision bf16-mixed --channels-last \
      --lightning bare 2>"$out/throughput-bf16-cl.log" \
      | tee "$out/throughput-bf16-mixed-channels-last.md" || status=1
    "$python" benchmarks/metrics.py "${metrics[@]}" 2>&1 | tee "$out/metrics.md" || status=1
    ;;
  amp)
    mnist=()
    [ -d .gpu-data/mnist ] && mnist=(--mnist_dir .gpu-data/mnist)
    runs=$(mktemp -d /tmp/amp-runs-XXXX)
    "$python" benchmarks/amp_check.py "${amp[@]}" --compare "${mnist[@]}" --workdir "$runs" \
      2>&1 | tee "$out/amp.md" || status=1
    # The end of each failing run's output, for the note.
    for f in "$runs"/*/output.txt; do
      if grep -q "Error" "$f" 2>/dev/null; then
        tail -n 20 "$f" >"$out/failed-$(basename "$(dirname "$f")").txt"
      fi
    done
    ;;
  *) echo "unknown part $part (throughput|amp)"; exit 2 ;;
esac
exit $status
