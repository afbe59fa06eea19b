"""The Kubernetes resources GPU work asks for, as `dagster-k8s/config` tags (README: Beyond one machine).

dagster-k8s reads this tag in two places, so the definitions carry it in both:
* run tags (the `tags` of `scale_shards_job`, `training_job`, `evaluation_job`): the `K8sRunLauncher`
  builds each run's pod from its run's tags, so runs of those jobs get a GPU;
* op tags of the GPU assets: `k8s_job_executor` builds each step's pod from its op's tags, for a
  deployment that runs one pod per step instead.
Plain JSON: loading the definitions needs no dagster-k8s.
"""

import json

GPU_K8S_CONFIG = {
    "container_config": {"resources": {"limits": {"nvidia.com/gpu": "1"}}},
    # GPU node pools are commonly tainted so that only pods asking for a GPU land there
    "pod_spec_config": {"tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]},
}
GPU_TAGS = {"dagster-k8s/config": json.dumps(GPU_K8S_CONFIG, sort_keys=True)}
