import os
import subprocess
import sys
from pathlib import Path

import dagster as dg

from stage1_assets.core.provenance import ProvenanceStore
from stage1_assets.definitions import defs
from stage1_assets.resources import BaseModelResource, ProvenanceResource, Stage1Paths

REPO = Path(__file__).resolve().parents[1]


def test_definitions_load_and_validate(tmp_path):
    dg.Definitions.validate_loadable(defs)
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path)}
    (tmp_path / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "dagster"), "definitions", "validate", "-w", "workspace.yaml"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "passed validation" in proc.stdout + proc.stderr


def test_core_has_no_orchestration_imports():
    """Every module of core/ imports without Dagster, DuckDB or Polars (a bare GPU host has none of them)."""
    code = (
        "import sys, pkgutil, importlib, stage1_assets.core as core\n"
        "names = [m.name for m in pkgutil.iter_modules(core.__path__)]\n"
        "assert len(names) >= 25, names\n"
        "for name in names: importlib.import_module('stage1_assets.core.' + name)\n"
        "bad = {'dagster', 'duckdb', 'polars'} & set(sys.modules)\n"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=120)


def test_base_model_materializes_with_metadata_and_provenance(tmp_path, embedded_dir):
    paths = Stage1Paths(data_dir=str(tmp_path))
    prov = ProvenanceResource(db_path=str(tmp_path / "prov.duckdb"))
    result = dg.materialize(
        [defs.get_assets_def("base_model")],
        resources={"model": BaseModelResource(models_dir=str(embedded_dir.parent)), "paths": paths,
                   "provenance": prov},
    )  # fmt: skip
    assert result.success
    [mat] = result.get_asset_materialization_events()
    meta = mat.materialization.metadata
    assert meta["name"].value == "gemma-3-270m"
    assert meta["parameter_count"].value > 200_000_000
    fingerprint = meta["fingerprint"].value
    rows = ProvenanceStore(tmp_path / "prov.duckdb").lineage(fingerprint)
    assert [r["asset_key"] for r in rows] == ["base_model"]
    assert rows[0]["model_fingerprint"] == fingerprint
    assert (tmp_path / "base_model.json").exists()
