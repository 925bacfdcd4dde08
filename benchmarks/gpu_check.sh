#!/usr/bin/env bash
# One command for a machine with a GPU: the CUDA tests, the selftest and the benchmarks
# the performance tables need, in under ten minutes. Prints everything; the last lines
# of each benchmark are the ratios the tables quote.
#
#   bash benchmarks/gpu_check.sh            # from the repository root
#
# The machine needs torch (a CUDA build) and triton; pure-Python packages it lacks
# (optree, pytest, hypothesis) are installed from wheels in .gpu_wheels/ when present,
# which a machine without network access can be given beforehand:
#   pip download --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
#       -d .gpu_wheels optree pytest hypothesis
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:/tmp/fc_deps${PYTHONPATH:+:$PYTHONPATH}"
if [ -d .gpu_wheels ]; then
  python -m pip install -q --no-index --find-links .gpu_wheels --target /tmp/fc_deps \
    optree pytest hypothesis 2>&1 | tail -2
fi
python - <<'PY'
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))
PY
status=0
echo "== selftest (engines per optimizer, probe outcomes, agreement)"
timeout 120 python -m funcurriculum.selftest || status=1
echo "== CUDA tests"
timeout 240 python -m pytest -q -x -p no:cacheprovider -m "cuda" \
  tests/test_triton_kernels.py tests/test_fast_paths.py || status=1
timeout 120 python -m pytest -q -x -p no:cacheprovider tests/test_engine.py || status=1
echo "== benchmarks (ratios vs torch.optim fused, same process)"
for opt in adam adamw sgd; do
  timeout 60 python benchmarks/bench_update.py --device cuda --opt "$opt" \
    --params 2e8 --leaves 200 --rounds 4 --iters 5 | tail -1 || status=1
done
timeout 60 python benchmarks/bench_generic.py --device cuda --params 2e8 --leaves 200 \
  --rounds 4 --iters 5 | tail -1 || status=1
timeout 60 python benchmarks/bench_vmap.py --device cuda | tail -1 || status=1
# the catalogue: each optimizer against torch's fastest implementation (one line each)
timeout 120 python benchmarks/bench_catalogue.py --device cuda --params 4e7 --leaves 40 \
  --rounds 4 --iters 5 | grep vs_fastest || status=1
exit $status
