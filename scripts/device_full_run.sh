#!/usr/bin/env bash
# The `full` profile on a GPU host that reaches no package registry, in steps that each end well
# inside a short command limit (the lent H200 allows 10 minutes per command and keeps /tmp only
# while calls follow each other closely):
#
#   bash scripts/device_full_run.sh install .bundle/batch-NN   # after each transfer (offline_bundle.py)
#   bash scripts/device_full_run.sh start                      # the README main job, in the background
#   bash scripts/device_full_run.sh wait SECONDS               # progress; returns early when it ends
#   bash scripts/device_full_run.sh collect OUT_DIR            # results/full-h200 files, as one tarball
#
# The main job is `python -m stage1_assets.run_all` with STAGE1_PROFILE=full: the same assets, checks,
# partitions, provenance and Dagster instance as anywhere else. Everything it writes is under $ROOT.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT="${STAGE1_RUN_ROOT:-/tmp/stage1-full}"
SITE="$ROOT/site"
export PYTHONPATH="$SITE:$PWD" DAGSTER_HOME="$ROOT/dagster_home" STAGE1_DATA_DIR="$ROOT/data"
export STAGE1_MODELS_DIR="$ROOT/models" STAGE1_PROFILE=full PYTHONUNBUFFERED=1
LOG="$ROOT/run.log"

case "${1:-}" in
  install)
    python3 scripts/offline_bundle.py install --incoming "$2" --stage "$ROOT/stage" --target "$SITE"
    ;;
  start)
    mkdir -p "$DAGSTER_HOME" && cp dagster.yaml "$DAGSTER_HOME/dagster.yaml"
    python3 -c "import dagster, duckdb, polars, bitsandbytes, torch; print('ready on', torch.cuda.get_device_name())" \
      || exit 1
    # its own session: it goes on after this command returns, for as long as the machine is held
    setsid nohup bash -c "python3 -m stage1_assets.run_all; echo \"[stage1] exit \$?\"" >"$LOG" 2>&1 </dev/null &
    echo "started: $LOG"
    ;;
  wait)
    deadline=$((SECONDS + ${2:-500}))
    while [ $SECONDS -lt "$deadline" ] && ! grep -q '^\[stage1\] exit' "$LOG"; do sleep 5; done
    grep '^\[stage1\]' "$LOG" | tail -n 40
    grep -E 'progress|Error|error|Traceback' "$LOG" | grep -v DEBUG | tail -n 15
    ;;
  collect)
    out="$2" && mkdir -p "$out/full-h200"
    python3 scripts/collect_results.py --data-dir "$STAGE1_DATA_DIR" --out "$out/full-h200"
    grep -v ' - DEBUG - ' "$LOG" >"$out/full-h200/run.log"
    tar -czf "$out/full-h200.tgz" -C "$out" full-h200 && rm -r "$out/full-h200"
    ls -la "$out"
    ;;
  *)
    echo "usage: $0 install DIR | start | wait SECONDS | collect OUT_DIR" >&2
    exit 2
    ;;
esac
