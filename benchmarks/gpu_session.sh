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
set -uo pipefail
part=${1:?usage: gpu_session.sh throughput|amp OUT}
out=${2:?usage: gpu_session.sh throughput|amp OUT}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi

{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  python3 -c "import torch, lightning; print('torch', torch.__version__, 'cuda', torch.version.cuda,
'| lightning', lightning.__version__, '|', torch.cuda.get_device_name())"
} 2>&1 | tee "$out/env.txt"

case "$part" in
  throughput)
    for precision in 16-mixed bf16-mixed; do
      python3 benchmarks/throughput.py --device cuda --precision "$precision" --repeats 3 \
        --lightning all 2>"$out/throughput-$precision.log" | tee "$out/throughput-$precision.md"
    done
    python3 benchmarks/throughput.py --device cuda --precision bf16-mixed --channels-last \
      --repeats 3 --lightning bare 2>"$out/throughput-bf16-cl.log" \
      | tee "$out/throughput-bf16-mixed-channels-last.md"
    python3 benchmarks/metrics.py --device cuda 2>&1 | tee "$out/metrics.md"
    ;;
  amp)
    mnist=()
    [ -d .gpu-data/mnist ] && mnist=(--mnist_dir .gpu-data/mnist)
    python3 benchmarks/amp_check.py --precision 16-mixed --steps 300 --compare "${mnist[@]}" \
      --workdir /tmp/amp-runs 2>&1 | tee "$out/amp-16-mixed.md"
    # The failing runs' output, if any, for the note.
    for f in /tmp/amp-runs/*/output.txt; do
      grep -l "Error" "$f" >/dev/null 2>&1 && tail -n 20 "$f" >"$out/failed-$(basename "$(dirname "$f")").txt"
    done
    ;;
  *) echo "unknown part $part (throughput|amp)"; exit 2 ;;
esac
