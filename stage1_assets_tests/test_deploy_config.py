"""What a multi-host deployment relies on, checked without a cluster: GPU requests as dagster-k8s reads them,
the artifact store chosen by configuration alone, and the files under deploy/.

There is no Kubernetes cluster (nor helm) here: the GPU request is checked by feeding the definitions' tags
to dagster-k8s's own code that builds a run's (or a step's) Kubernetes Job.
"""

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster_k8s.container_context import K8sContainerContext
from dagster_k8s.job import DagsterK8sJobConfig, construct_dagster_k8s_job, get_user_defined_k8s_config

from stage1_assets.definitions import defs
from stage1_assets.resources import Stage1Paths

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
GPU_ASSETS = {"scale_shards": "scale_shards_job", "adapter_checkpoint": "training_job", "eval_report": "evaluation_job"}


def k8s_job_for(k8s_config):
    """The Kubernetes Job dagster-k8s would create with this user-defined config."""
    job_config = DagsterK8sJobConfig(job_image="registry.example.com/stage1:test", dagster_home="/opt/dagster/home",
                                     instance_config_map="dagster-instance")  # fmt: skip
    return construct_dagster_k8s_job(job_config=job_config, args=["dagster", "api", "execute_run"],
                                     job_name="run-1", user_defined_k8s_config=k8s_config, pod_name="run-1",
                                     component="run_worker")  # fmt: skip


def assert_requests_one_gpu(k8s_job) -> None:
    pod = k8s_job.spec.template.spec
    assert pod.containers[0].resources.limits == {"nvidia.com/gpu": "1"}
    assert [(t.key, t.operator, t.effect) for t in pod.tolerations] == [("nvidia.com/gpu", "Exists", "NoSchedule")]


@pytest.mark.parametrize("asset_key", sorted(GPU_ASSETS))
def test_gpu_runs_and_steps_ask_kubernetes_for_a_gpu(asset_key):
    job = defs.resolve_job_def(GPU_ASSETS[asset_key])
    assert {k.to_user_string() for k in job.asset_layer.executable_asset_keys} == {asset_key}
    # K8sRunLauncher: the run's pod is built from the run's tags, which come from the job
    run = dg.DagsterInstance.ephemeral().create_run_for_job(job_def=job, tags=job.run_tags)
    context = K8sContainerContext.create_for_run(run, None, include_run_tags=True)
    assert_requests_one_gpu(k8s_job_for(context.run_k8s_config))
    # k8s_job_executor: each step's pod is built from its step's tags, its node's (op tags and invocation tags)
    [node] = job.graph.nodes
    assert_requests_one_gpu(k8s_job_for(get_user_defined_k8s_config(node.tags)))


def test_cpu_assets_ask_for_no_gpu_and_no_asset_tag_pretends_to():
    for key in ("base_model", "test_instructions", "pilot_data", "sft_dataset", "qc_summary"):
        assert "dagster-k8s/config" not in defs.get_assets_def(key).op.tags, key
    for assets_def in defs.resolve_asset_graph().assets_defs:
        # dagster-k8s reads run and op tags; an asset tag would ask for nothing
        assert not any(t.startswith("dagster-k8s/") for t in assets_def.tags_by_key.get(assets_def.key, {}))


def load_resources_in_subprocess(tmp_path, **env) -> dict:
    """The resources the code location builds from its environment (read when it loads, as in a pod)."""
    code = (
        "import json; from stage1_assets.definitions import defs; p, prov = defs.resources['paths'], "
        "defs.resources['provenance']; print(json.dumps({'store': p.artifact_store, 'location': "
        "p.location(p.path('a.json')), 'options': p.storage_options(), 'spool': prov.store().remote.url}))"
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith("STAGE1_ARTIFACT_STORE")}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**clean, "STAGE1_DATA_DIR": str(tmp_path), **env})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_the_artifact_store_is_chosen_by_environment_alone(tmp_path):
    options = {"endpoint_url": "http://127.0.0.1:9000"}
    remote = load_resources_in_subprocess(tmp_path, STAGE1_ARTIFACT_STORE="s3://bucket/stage1",
                                          STAGE1_ARTIFACT_STORE_OPTIONS=json.dumps(options))  # fmt: skip
    assert remote == {"store": "s3://bucket/stage1", "location": "s3://bucket/stage1/a.json", "options": options,
                      "spool": "s3://bucket/stage1/provenance/spool"}  # fmt: skip
    local = load_resources_in_subprocess(tmp_path)
    assert local == {"store": "", "location": str(tmp_path / "a.json"), "options": {}, "spool": ""}


def test_malformed_store_options_are_refused_with_the_reason(tmp_path):
    with pytest.raises(ValueError, match="must be a JSON object"):
        Stage1Paths(data_dir=str(tmp_path), artifact_store="s3://b", artifact_store_options="endpoint=x").store()


def test_deploy_files_configure_postgres_k8s_and_the_store():
    values = yaml.safe_load((DEPLOY / "values.yaml").read_text())
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    assert values["postgresql"]["postgresqlDatabase"] and values["postgresql"]["service"]["port"] == 5432
    [deployment] = values["dagster-user-deployments"]["deployments"]
    module = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["dagster"]["module_name"]
    assert deployment["dagsterApiGrpcArgs"] == ["-m", module]
    assert deployment["includeConfigInLaunchedRuns"] == {"enabled": True}  # run pods get the store's env and secret
    env = {e["name"]: e["value"] for e in deployment["env"]}
    assert env["STAGE1_ARTIFACT_STORE"].startswith("s3://")
    # the local working copy sits on the volume mounted into every run pod
    assert [m["mountPath"] for m in launcher["volumeMounts"]] == [env["STAGE1_DATA_DIR"]]
    assert {v["name"] for v in launcher["volumes"]} == {m["name"] for m in launcher["volumeMounts"]}
    secret = yaml.safe_load((DEPLOY / "artifact-store-secret.yaml").read_text())
    assert [s["name"] for s in deployment["envSecrets"]] == [secret["metadata"]["name"]]
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(secret["stringData"])

    # the driver dagster-postgres installs (psycopg2), named: SQLAlchemy 2.1 would pick psycopg 3 by default
    instance = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())
    assert instance["storage"]["postgres"]["postgres_db"]["scheme"] == "postgresql+psycopg2"
    assert values["postgresql"]["postgresqlScheme"] == "postgresql+psycopg2"
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert 'pip install "${STAGE1_TORCH}"' in dockerfile and ".[distributed,cuda]" in dockerfile
    assert f'"-m", "{module}"' in dockerfile
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert {r.split(">")[0] for r in extras["distributed"]} == {"dagster-postgres", "dagster-k8s", "s3fs"}
