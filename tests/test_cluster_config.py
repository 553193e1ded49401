"""cluster.yaml and deploy/kuberay.yaml: valid for the installed Ray, and consistent.

Offline: the launcher config is checked against the JSON schema that ships in
the installed Ray wheel and by Ray's own prepare_config/validate_config (which,
for AWS, only merge the packaged defaults.yaml; the AWS calls happen later, in
`ray up`'s bootstrap, which is never called here). Sockets are blocked while
Ray's validation runs to prove it.
"""
from __future__ import annotations

import copy
import importlib.resources
import json
import re
import socket
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_YAML = ROOT / "cluster.yaml"
KUBERAY_YAML = ROOT / "deploy" / "kuberay.yaml"
IMAGE = f"rayproject/ray:{ray.__version__}-py311-gpu"


@pytest.fixture(scope="module")
def schema() -> dict:
    text = importlib.resources.files("ray.autoscaler").joinpath("ray-schema.json").read_text()
    return json.loads(text)


@pytest.fixture()
def cluster() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


@pytest.fixture()
def kuberay() -> dict:
    return yaml.safe_load(KUBERAY_YAML.read_text())


@pytest.fixture()
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("cluster config validation tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


# --- cluster.yaml: schema and Ray's own validation -------------------------

def test_cluster_yaml_matches_the_installed_ray_schema(cluster, schema):
    jsonschema.validate(cluster, schema)


def test_cluster_yaml_passes_rays_prepare_and_validate_config(cluster, no_network):
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(cluster))
    validate_config(prepared)
    # prepare_config merged the AWS defaults under our values, not over them.
    assert prepared["head_node_type"] == "head"
    assert prepared["available_node_types"]["gpu_worker"]["resources"] == {"CPU": 8, "GPU": 1}
    assert prepared["provider"]["cache_stopped_nodes"] is False


@pytest.mark.parametrize(
    "break_config",
    [
        pytest.param(lambda c: c.update(head_node_typ=c.pop("head_node_type")), id="misspelled-top-level-key"),
        pytest.param(lambda c: c.pop("provider"), id="missing-provider"),
        pytest.param(lambda c: c["available_node_types"]["gpu_worker"]["resources"].update(GPU="1"),
                     id="gpu-count-as-string"),
        pytest.param(lambda c: c["available_node_types"]["gpu_worker"].pop("node_config"),
                     id="node-type-without-node-config"),
        pytest.param(lambda c: c["docker"].update(imagee=c["docker"]["image"]), id="misspelled-docker-key"),
    ],
)
def test_schema_validation_rejects_broken_configs(cluster, schema, break_config):
    broken = copy.deepcopy(cluster)
    break_config(broken)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def test_rays_validate_config_rejects_an_unknown_head_node_type(cluster, no_network):
    from ray.autoscaler._private.util import prepare_config, validate_config

    broken = copy.deepcopy(cluster)
    broken["head_node_type"] = "no_such_type"
    with pytest.raises(ValueError, match="head_node_type"):
        validate_config(prepare_config(broken))


# --- cluster.yaml: what autoal needs ---------------------------------------

def test_cluster_has_a_cpu_head_and_autoscaled_gpu_workers(cluster):
    assert cluster["cluster_name"] == "autoal"
    assert cluster["provider"] == {**cluster["provider"], "type": "aws", "region": "us-west-2",
                                   "cache_stopped_nodes": False}
    assert cluster["auth"]["ssh_user"] == "ubuntu"
    types = cluster["available_node_types"]
    head = types[cluster["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and head["resources"]["CPU"] > 0
    gpu = types["gpu_worker"]
    assert gpu["resources"] == {"CPU": 8, "GPU": 1}
    assert gpu["node_config"]["InstanceType"].startswith("g5.")
    assert (gpu["min_workers"], gpu["max_workers"]) == (0, 8)
    assert cluster["max_workers"] >= gpu["max_workers"]


def test_cluster_image_matches_the_installed_ray(cluster):
    assert cluster["docker"]["image"] == IMAGE
    pins = [cmd for cmd in cluster["setup_commands"] if "ray[" in cmd]
    assert pins and all(f"=={ray.__version__}" in cmd for cmd in pins)


def test_cluster_installs_torch_and_the_project_from_the_mounted_checkout(cluster):
    assert cluster["file_mounts"]["~/autoal"] == "."
    setup = cluster["setup_commands"]
    torch_at = next(i for i, cmd in enumerate(setup) if re.search(r"pip install .*\btorch\b", cmd))
    project_at = next(i for i, cmd in enumerate(setup) if "pip install -e ~/autoal" in cmd)
    assert any("torchvision" in cmd for cmd in setup)
    assert torch_at < project_at
    # The "." mount skips what git ignores (the local .venv above all).
    assert ".gitignore" in cluster["rsync_filter"]
    assert ".venv" in (ROOT / ".gitignore").read_text()


def test_every_ray_process_on_the_cluster_runs_with_token_auth(cluster):
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        commands = cluster[key]
        assert commands[0] == "ray stop"
        starts = [cmd for cmd in commands if "ray start" in cmd]
        assert len(starts) == 1, key
        start = starts[0]
        assert start.index("export RAY_AUTH_MODE=token") < start.index("ray start"), key
    assert "--head --port=6379" in cluster["head_start_ray_commands"][1]
    assert "--dashboard-host=0.0.0.0" in cluster["head_start_ray_commands"][1]
    assert "--address=$RAY_HEAD_IP:6379" in cluster["worker_start_ray_commands"][1]
    # Same token everywhere: the local token file is mounted on every node ...
    assert cluster["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    # ... and interactive shells on the nodes use token mode too.
    assert any("export RAY_AUTH_MODE=token" in cmd and ".bashrc" in cmd for cmd in cluster["setup_commands"])
    # No command anywhere switches auth off or to another mode.
    text = CLUSTER_YAML.read_text()
    assert set(re.findall(r"RAY_AUTH_MODE=(\w+)", text)) == {"token"}


# --- deploy/kuberay.yaml ---------------------------------------------------

def _containers(pod_template: dict) -> list[dict]:
    return pod_template["spec"]["containers"]


def _auth_env(env: list[dict]) -> dict:
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in env
            if item["name"].startswith("RAY_AUTH")}


def test_kuberay_manifest_is_a_raycluster_with_head_and_gpu_workers(kuberay):
    assert kuberay["apiVersion"] == "ray.io/v1"
    assert kuberay["kind"] == "RayCluster"
    assert kuberay["metadata"]["name"] == "autoal"
    spec = kuberay["spec"]
    head = _containers(spec["headGroupSpec"]["template"])
    assert [c["image"] for c in head] == [IMAGE]
    assert "nvidia.com/gpu" not in head[0]["resources"].get("limits", {})
    assert {p["containerPort"] for p in head[0]["ports"]} >= {6379, 8265}

    groups = spec["workerGroupSpecs"]
    gpu_groups = [g for g in groups
                  if any(c["resources"]["limits"].get("nvidia.com/gpu") == 1 for c in _containers(g["template"]))]
    assert gpu_groups, "no worker group requests nvidia.com/gpu"
    group = gpu_groups[0]
    assert group["minReplicas"] == 0 and group["maxReplicas"] >= 1
    assert all(c["image"] == IMAGE for c in _containers(group["template"]))


def test_kuberay_token_auth_reaches_head_workers_and_autoscaler(kuberay):
    spec = kuberay["spec"]
    envs = [c.get("env", []) for c in _containers(spec["headGroupSpec"]["template"])]
    for group in spec["workerGroupSpecs"]:
        envs += [c.get("env", []) for c in _containers(group["template"])]
    if spec.get("enableInTreeAutoscaling"):
        envs.append(spec["autoscalerOptions"]["env"])
    auth = [_auth_env(env) for env in envs]
    assert all(a["RAY_AUTH_MODE"] == "token" for a in auth)
    assert all(a["RAY_AUTH_TOKEN"] == auth[0]["RAY_AUTH_TOKEN"] for a in auth)
    assert auth[0]["RAY_AUTH_TOKEN"]["secretKeyRef"]["key"] == "auth_token"
