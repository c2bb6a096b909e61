#!/usr/bin/env bash
# The GPU checks on a fresh GPU machine, in one go: the GPU unit tests, then the Spark-free GPU bench
# (bench/worker_bench.py).
#
#   bash bench/gpu_box.sh [WHEELS_DIR]          # from the repository root, or anywhere in it
#
# Needs python3 with torch, torchvision, Pillow, pyarrow, numpy, safetensors and pytest, and
# nvidia-smi; no Java or pyspark, and sqlinfer need not be installed. Libraries sqlinfer's worker
# and project code import that are missing (pydantic, PyYAML, Jinja2, click) are unpacked offline
# from the wheels in WHEELS_DIR (default: shared/wheels) and ../shared/wheels into
# bench/results/gpu_box_site, which only this run's PYTHONPATH sees. The tests' output lands in
# bench/results/worker/tests.log, the bench's figures in bench/results/worker/ (bench.json,
# bench.log); all three are copied to $OUT when it is set (the folder a remote runner brings back).
# Other bench options: BENCH_ARGS="--n 2048" bash bench/gpu_box.sh; SKIP_TESTS=1 skips the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
results=bench/results/worker
site=$PWD/bench/results/gpu_box_site

missing=$(PYTHONPATH="$site" "$python" - <<'PY'
import importlib.util
print(" ".join(m for m in ("pydantic", "yaml", "jinja2", "click") if importlib.util.find_spec(m) is None))
PY
)
if [ -n "$missing" ]; then
    wheels=$(ls "${1:-shared/wheels}"/*.whl ../shared/wheels/*.whl 2>/dev/null || true)
    [ -n "$wheels" ] || { echo "missing: $missing, and no wheels were found" >&2; exit 1; }
    echo "missing: $missing; unpacking" $wheels
    mkdir -p "$site"
    for wheel in $wheels; do "$python" -m zipfile -e "$wheel" "$site"; done  # a wheel is a zip of site-packages
fi
export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}"

nvidia-smi -L
mkdir -p "$results"
bring_back() {
    if [ -n "${OUT:-}" ]; then cp "$results"/bench.json "$results"/bench.log "$results"/tests.log "$OUT/" 2>/dev/null || true; fi
}
trap bring_back EXIT
if [ -z "${SKIP_TESTS:-}" ]; then
    # The unit tests of the GPU path (tests/unit/test_gpu.py skips without CUDA, so CI never runs it).
    set +e
    "$python" -m pytest -q -p no:cacheprovider -rs tests/unit/test_gpu.py tests/unit/test_gpu_decode.py \
        tests/unit/test_decode_pool.py tests/unit/test_precision.py tests/unit/test_worker_without_spark.py \
        2>&1 | tee "$results/tests.log"
    echo "pytest exit ${PIPESTATUS[0]}" | tee -a "$results/tests.log"
    set -e
fi
# shellcheck disable=SC2086 # BENCH_ARGS holds several options
"$python" bench/worker_bench.py --device cuda --out "$results" ${BENCH_ARGS:-} 2>&1 | tee "$results/bench.log"
