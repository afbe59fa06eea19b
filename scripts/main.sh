#!/usr/bin/env bash
# The main job: materialize the whole asset graph on the embedded default model (`local` profile
# unless STAGE1_PROFILE says otherwise), recorded in the persistent instance under data/dagster_home.
set -euo pipefail
cd "$(dirname "$0")/.."
export DAGSTER_HOME="${DAGSTER_HOME:-$PWD/data/dagster_home}"
exec .venv/bin/python -m stage1_assets.run_all "$@"
