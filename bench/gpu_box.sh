#!/usr/bin/env bash
# The Spark-free GPU bench (bench/worker_bench.py) on a fresh GPU machine, in one go.
#
#   bash bench/gpu_box.sh [WHEELS_DIR]          # from the repository root, or anywhere in it
#
# Needs python3 with torch, torchvision, Pillow, pyarrow, numpy and safetensors, and nvidia-smi;
# no Java, pyspark or YAML library, and sqlinfer need not be installed. Where pydantic is missing,
# it is installed offline from WHEELS_DIR (default: shared/wheels, else ../shared/wheels) into
# bench/results/gpu_box_site, which only this run's PYTHONPATH sees. The figures land in
# bench/results/worker/ (bench.json, bench.log) and are copied to $OUT when it is set (the folder a
# remote runner brings back). Other bench options: BENCH_ARGS="--n 2048" bash bench/gpu_box.sh
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
results=bench/results/worker
site=$PWD/bench/results/gpu_box_site

if ! PYTHONPATH="$site" "$python" -c "import pydantic" 2>/dev/null; then
    wheels=${1:-$(for d in shared/wheels ../shared/wheels; do [ -d "$d" ] && echo "$d" && break; done)}
    [ -n "$wheels" ] || { echo "pydantic is missing and no wheels folder was found" >&2; exit 1; }
    if "$python" -m pip --version >/dev/null 2>&1; then
        "$python" -m pip install --quiet --no-index --find-links "$wheels" --target "$site" \
            --root-user-action=ignore pydantic
    else  # no pip: a wheel is a zip of what goes into site-packages
        for wheel in "$wheels"/*.whl; do "$python" -m zipfile -e "$wheel" "$site"; done
    fi
    PYTHONPATH="$site" "$python" -c "import pydantic; print('pydantic', pydantic.VERSION, 'from', pydantic.__file__)"
fi
export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}"

nvidia-smi -L
mkdir -p "$results"
# shellcheck disable=SC2086 # BENCH_ARGS holds several options
"$python" bench/worker_bench.py --device cuda --out "$results" ${BENCH_ARGS:-} 2>&1 | tee "$results/bench.log"
if [ -n "${OUT:-}" ]; then
    cp "$results/bench.json" "$results/bench.log" "$OUT/"
fi
