"""The child manifests a MultimodalTrainJob turns into: golden files plus the behaviours a cluster relies on."""

from __future__ import annotations

import subprocess
import sys

import kubernetes_validate
import pytest
import yaml

from kubefusion import config as trainer_config
from kubefusion_operator import api
from kubefusion_operator.backends import build_pytorchjob, run_policy_patch
from kubefusion_operator.builders import build_configmap, with_defaults, with_image, world_size
from kubefusion_operator.validation import validate_spec

K8S_VERSION = "1.37.0"

ONE_NODE = {"image": "registry.example.com/kubefusion-trainer:0.1.0", "data": {"path": "gs://datasets/products"}}
SUSPENDED_CPU = {
    "image": "registry.example.com/kubefusion-trainer:0.1.0",
    "resources": {"gpusPerNode": 0, "sharedMemory": "1Gi"},
    "monitoring": {"metricsPort": 0},
    "runPolicy": {"suspend": True},
}


def cases(example_spec):
    return {"one-node": ONE_NODE, "two-nodes-pvc": example_spec, "suspended-cpu": SUSPENDED_CPU}


def kubeflow_world_size(pytorchjob):
    """What Kubeflow's training operator sets as WORLD_SIZE: replicas times nprocPerNode, where a value that is
    not an integer (auto, cpu, gpu) counts as 1."""
    replicas = sum(r["replicas"] for r in pytorchjob["spec"]["pytorchReplicaSpecs"].values())
    nproc = pytorchjob["spec"].get("nprocPerNode", "1")
    return replicas * (int(nproc) if nproc.isdigit() else 1)


def templates(pytorchjob):
    return [r["template"] for r in pytorchjob["spec"]["pytorchReplicaSpecs"].values()]


def container(template, name):
    spec = template["spec"]
    (found,) = [c for c in spec["containers"] + spec.get("initContainers", []) if c["name"] == name]
    return found


@pytest.mark.parametrize("case", ["one-node", "two-nodes-pvc", "suspended-cpu"])
def test_children_match_golden_files(case, example_spec, meta, golden):
    spec = cases(example_spec)[case]
    assert validate_spec(spec, name=meta["name"]) == []
    golden(f"{case}.configmap.yaml", build_configmap(spec, meta))
    golden(f"{case}.pytorchjob.yaml", build_pytorchjob(spec, meta))


@pytest.mark.parametrize("case", ["one-node", "two-nodes-pvc", "suspended-cpu"])
def test_children_are_valid_kubernetes_objects(case, example_spec, meta):
    spec = cases(example_spec)[case]
    kubernetes_validate.validate(build_configmap(spec, meta), K8S_VERSION, strict=True)
    for template in templates(build_pytorchjob(spec, meta)):
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x", **template["metadata"]},
               "spec": template["spec"]}
        kubernetes_validate.validate(pod, K8S_VERSION, strict=True)


def test_two_nodes_of_four_gpus_make_a_world_of_eight(example_spec, meta):
    job = build_pytorchjob(example_spec, meta)
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert job["apiVersion"] == "kubeflow.org/v1" and job["kind"] == "PyTorchJob"
    assert job["metadata"]["name"] == "products" and job["metadata"]["namespace"] == "ml-team"
    assert job["spec"]["nprocPerNode"] == "4"
    assert replicas["Master"]["replicas"] == 1 and replicas["Worker"]["replicas"] == 1
    assert kubeflow_world_size(job) == 8
    assert job["spec"]["runPolicy"]["schedulingPolicy"]["minAvailable"] == 2
    for template in templates(job):
        trainer = container(template, "pytorch")
        assert trainer["resources"]["limits"]["nvidia.com/gpu"] == 4
        assert [p["name"] for p in trainer["ports"] if p["name"].startswith("metrics-")] == [
            "metrics-0", "metrics-1", "metrics-2", "metrics-3"]
        assert [p["containerPort"] for p in trainer["ports"] if p["name"].startswith("metrics-")] == [
            9402, 9403, 9404, 9405]


@pytest.mark.parametrize("nodes, gpus", [(1, 1), (1, 4), (3, 8), (4, 0)])
def test_world_size_is_nodes_times_processes_per_node(nodes, gpus, meta):
    job = build_pytorchjob({"image": "x", "resources": {"nodes": nodes, "gpusPerNode": gpus}}, meta)
    assert isinstance(job["spec"]["nprocPerNode"], str)
    assert job["spec"]["nprocPerNode"] == str(max(gpus, 1))
    assert kubeflow_world_size(job) == nodes * max(gpus, 1) == world_size({"resources": {"nodes": nodes,
                                                                                          "gpusPerNode": gpus}})
    assert ("Worker" in job["spec"]["pytorchReplicaSpecs"]) == (nodes > 1)


def test_cpu_job_asks_for_no_gpu_and_runs_one_process(meta):
    job = build_pytorchjob(SUSPENDED_CPU, meta)
    trainer = container(templates(job)[0], "pytorch")
    assert "nvidia.com/gpu" not in trainer.get("resources", {}).get("limits", {})
    assert job["spec"]["nprocPerNode"] == "1"
    assert [p["name"] for p in trainer["ports"]] == ["pytorchjob-port"]  # metricsPort 0: no metrics ports


def test_pods_run_the_contract_commands(example_spec, meta):
    for template in templates(build_pytorchjob(example_spec, meta)):
        init = container(template, "preprocess")
        trainer = container(template, "pytorch")
        assert init["image"] == trainer["image"] == "registry.example.com/kubefusion-trainer:0.1.0"
        assert " ".join(init["command"]) == "kubefusion preprocess --config /etc/kubefusion/job.yaml --out /artifacts"
        assert " ".join(trainer["command"]) == ("torchrun -m kubefusion train --config /etc/kubefusion/job.yaml "
                                                "--artifacts /artifacts --output /checkpoints")
        env = {e["name"]: e["value"] for e in trainer["env"]}
        assert env["KUBEFUSION_NAMESPACE"] == "ml-team" and env["KUBEFUSION_JOB_NAME"] == "products"
        assert env["NCCL_DEBUG"] == "WARN" and env["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "1"
        assert template["spec"]["containers"] == [trainer] and template["spec"]["initContainers"] == [init]


def test_volumes_follow_the_mount_contract(example_spec, meta):
    template = templates(build_pytorchjob(example_spec, meta))[0]
    volumes = {v["name"]: v for v in template["spec"]["volumes"]}
    trainer_mounts = {m["mountPath"]: m for m in container(template, "pytorch")["volumeMounts"]}
    init_mounts = {m["mountPath"]: m for m in container(template, "preprocess")["volumeMounts"]}

    shm = volumes[trainer_mounts["/dev/shm"]["name"]]
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "32Gi"}
    assert volumes[trainer_mounts["/data"]["name"]]["persistentVolumeClaim"] == {"claimName": "datasets"}
    assert trainer_mounts["/data"]["readOnly"] and init_mounts["/data"]["readOnly"]
    assert volumes[trainer_mounts["/checkpoints"]["name"]]["persistentVolumeClaim"] == {"claimName": "products-runs"}
    assert volumes[trainer_mounts["/artifacts"]["name"]] == {"name": "artifacts", "emptyDir": {}}
    assert not init_mounts["/artifacts"].get("readOnly") and trainer_mounts["/artifacts"]["readOnly"]
    config = volumes[trainer_mounts["/etc/kubefusion"]["name"]]
    assert config["configMap"]["name"] == "products-config"


def test_data_volume_is_left_out_without_a_source(meta):
    template = templates(build_pytorchjob(ONE_NODE, meta))[0]
    assert "/data" not in [m["mountPath"] for m in container(template, "pytorch")["volumeMounts"]]
    assert {"checkpoints", "artifacts"} <= {v["name"] for v in template["spec"]["volumes"] if "emptyDir" in v}


def test_pods_run_as_non_root_without_privileges(example_spec, meta):
    for template in templates(build_pytorchjob(example_spec, meta)):
        pod_security = template["spec"]["securityContext"]
        assert pod_security["runAsNonRoot"] is True
        assert pod_security["runAsUser"] == pod_security["runAsGroup"] == pod_security["fsGroup"] == 1000
        assert pod_security["seccompProfile"] == {"type": "RuntimeDefault"}
        for name in ("pytorch", "preprocess"):
            security = container(template, name)["securityContext"]
            assert security == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def test_children_are_owned_and_labelled(example_spec, meta):
    pytorchjob = build_pytorchjob(example_spec, meta)
    configmap = build_configmap(example_spec, meta)
    for child in (pytorchjob, configmap):
        (owner,) = child["metadata"]["ownerReferences"]
        assert owner == {"apiVersion": "kubefusion.io/v1alpha1", "kind": "MultimodalTrainJob", "name": "products",
                         "uid": meta["uid"], "controller": True, "blockOwnerDeletion": True}
        assert child["metadata"]["labels"]["kubefusion.io/job-name"] == "products"
        assert child["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "kubefusion-operator"
    for template in templates(pytorchjob):
        assert template["metadata"]["labels"]["kubefusion.io/job-name"] == "products"
    with pytest.raises(ValueError, match="uid"):
        build_pytorchjob(example_spec, {"name": "products"})


def test_scheduling_reaches_the_queue_and_the_pods(example_spec, meta):
    # What a PyTorchJob takes per job and a TrainJob from its runtime: the example leaves it out to run on both.
    spec = {**example_spec, "scheduling": {**example_spec["scheduling"], "priorityClassName": "high"},
            "runPolicy": {**example_spec["runPolicy"], "ttlSecondsAfterFinished": 3600}}
    job = build_pytorchjob(spec, meta)
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    policy = job["spec"]["runPolicy"]
    assert policy["schedulingPolicy"] == {"minAvailable": 2, "queue": "team-a", "priorityClass": "high"}
    assert policy == {**policy, "backoffLimit": 3, "activeDeadlineSeconds": 86400, "ttlSecondsAfterFinished": 3600,
                      "cleanPodPolicy": "Running", "suspend": False}
    for template in templates(job):
        pod = template["spec"]
        assert pod["priorityClassName"] == "high"
        assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
        assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
        assert container(template, "pytorch")["resources"] == {
            "requests": {"cpu": "32", "memory": "192Gi"},
            "limits": {"cpu": "32", "memory": "192Gi", "nvidia.com/gpu": 4}}
    for name in ("Master", "Worker"):
        assert job["spec"]["pytorchReplicaSpecs"][name]["restartPolicy"] == "OnFailure"


def test_no_queue_means_no_queue_label(meta):
    job = build_pytorchjob(ONE_NODE, meta)
    assert "kueue.x-k8s.io/queue-name" not in job["metadata"]["labels"]
    assert job["spec"]["runPolicy"]["schedulingPolicy"] == {"minAvailable": 1}
    assert "priorityClassName" not in templates(job)[0]["spec"]


def test_suspend_reaches_the_pytorchjob(meta):
    assert build_pytorchjob(SUSPENDED_CPU, meta)["spec"]["runPolicy"]["suspend"] is True
    assert build_pytorchjob(ONE_NODE, meta)["spec"]["runPolicy"]["suspend"] is False


def test_run_policy_patch_carries_only_the_mutable_fields():
    patch = run_policy_patch({"image": "x", "runPolicy": {"suspend": True, "activeDeadlineSeconds": 60}})
    assert patch == {"spec": {"runPolicy": {"suspend": True, "backoffLimit": 3, "activeDeadlineSeconds": 60,
                                            "ttlSecondsAfterFinished": None}}}


# ------------------------------------------------------------------------------------------- the ConfigMap


def trainer_job(configmap):
    return trainer_config.job_from_dict(yaml.safe_load(configmap["data"]["job.yaml"]))


def test_configmap_job_yaml_is_what_the_trainer_parses(example_spec, meta):
    configmap = build_configmap(example_spec, meta)
    assert configmap["metadata"]["name"] == "products-config"
    document = yaml.safe_load(configmap["data"]["job.yaml"])
    job = trainer_job(configmap)
    assert (job.name, job.namespace) == ("products", "ml-team")
    assert job.data.path == "/data/products"
    assert job.data.on_bad_record == "skip"
    assert job.resources.nodes == 2 and job.resources.gpus_per_node == 4
    assert job.model.embed_dim == 512 and job.training.precision == "bf16"
    # every value written is read back unchanged (no field the trainer would read differently)
    assert_subset(document["spec"], trainer_config.job_to_dict(job)["spec"], "spec")
    assert not {"scheduling", "runPolicy", "storage"} & set(document["spec"])


def assert_subset(written, read, path):
    if isinstance(written, dict):
        for key, value in written.items():
            assert key in read, f"{path}.{key} written but not read back"
            assert_subset(value, read[key], f"{path}.{key}")
    else:
        assert written == read, f"{path}: wrote {written!r}, trainer read {read!r}"


@pytest.mark.parametrize("path, source, expected", [
    ("products/", {"persistentVolumeClaim": {"claimName": "d"}}, "/data/products"),
    ("/products", {"nfs": {"server": "nfs", "path": "/exports"}}, "/data/products"),
    (".", {"persistentVolumeClaim": {"claimName": "d"}}, "/data"),
    ("gs://bucket/products", {}, "gs://bucket/products"),
    ("s3://bucket/products", {"persistentVolumeClaim": {"claimName": "d"}}, "s3://bucket/products"),
    ("builtin:demo", {}, "builtin:demo"),
])
def test_data_path_is_rewritten_only_for_volumes(path, source, expected, meta):
    configmap = build_configmap({"image": "x", "data": {"path": path, "source": source}}, meta)
    assert trainer_job(configmap).data.path == expected


def test_ood_path_in_the_volume_is_rewritten_too(meta):
    spec = {"image": "x", "data": {"path": "products", "oodPath": "products-ood",
                                   "source": {"persistentVolumeClaim": {"claimName": "d"}}}}
    assert trainer_job(build_configmap(spec, meta)).data.ood_path == "/data/products-ood"


def test_defaults_are_explicit_in_the_job_yaml_and_match_the_trainer(meta):
    document = yaml.safe_load(build_configmap({"image": "x"}, meta)["data"]["job.yaml"])
    trainer_defaults = trainer_config.job_to_dict(trainer_config.JobConfig(name="products", namespace="ml-team"))
    assert_subset(document["spec"], {**trainer_defaults["spec"], "image": "x"}, "spec")


DEFAULT_IMAGE = "registry.example.com/ml/kubefusion-trainer:2026.11.1"


def test_a_job_without_image_runs_the_operators_default_in_both_containers_and_the_job_yaml(meta):
    spec = with_image({"data": {"path": "gs://datasets/products"}}, DEFAULT_IMAGE)
    assert validate_spec(spec) == []
    for template in templates(build_pytorchjob(spec, meta)):
        assert container(template, api.PREPROCESS_CONTAINER)["image"] == DEFAULT_IMAGE
        assert container(template, api.TRAINER_CONTAINER)["image"] == DEFAULT_IMAGE
    assert trainer_job(build_configmap(spec, meta)).image == DEFAULT_IMAGE  # what ran, in one file


@pytest.mark.parametrize("spec, expected", [
    ({}, DEFAULT_IMAGE),
    ({"image": None}, DEFAULT_IMAGE),  # null counts as absent, as in CRD defaulting
    ({"image": "mine:1"}, "mine:1"),  # the job's own image wins
    ({"image": ""}, ""),  # left for validation to refuse, not silently replaced
])
def test_with_image_fills_only_a_missing_image(spec, expected):
    assert with_image(spec, DEFAULT_IMAGE)["image"] == expected


def test_with_image_without_a_default_leaves_the_spec_as_written():
    spec = {"data": {"path": "gs://b/p"}}
    assert with_image(spec, None) == with_image(spec, "") == spec
    assert with_image(spec, DEFAULT_IMAGE) == {**spec, "image": DEFAULT_IMAGE}
    assert spec == {"data": {"path": "gs://b/p"}}  # the input is not modified


def test_builders_do_not_modify_their_input(example_spec, meta):
    spec = yaml.safe_load(yaml.safe_dump(example_spec))
    build_pytorchjob(spec, meta)
    build_configmap(spec, meta)
    with_defaults(spec)
    assert spec == example_spec


def test_rendering_is_deterministic(example_spec, meta):
    assert build_pytorchjob(example_spec, meta) == build_pytorchjob(example_spec, meta)
    text = build_configmap(example_spec, meta)["data"]["job.yaml"]
    assert text == build_configmap(example_spec, meta)["data"]["job.yaml"]
    assert "&id" not in yaml.safe_dump(build_pytorchjob(example_spec, meta))  # no shared sub-objects


def test_operator_package_imports_no_trainer_torch_tensorflow_or_kopf():
    code = (
        "import sys\n"
        "import kubefusion_operator.api, kubefusion_operator.builders, kubefusion_operator.status\n"
        "import kubefusion_operator.validation\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('kubefusion', 'torch', 'tensorflow', 'kopf'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
    assert api.TRAINER_CONTAINER == "pytorch"


def test_example_job_trains_the_resnet50_bert_base_preset(example_job):
    job = trainer_config.job_from_dict(example_job)
    preset = trainer_config.resnet50_bert_base()
    assert job.model == preset.model
    assert job.preprocessing == preset.preprocessing
    assert job.training == preset.training
    assert (job.resources.nodes, job.resources.gpus_per_node, job.resources.shared_memory) == (2, 4, "32Gi")
    assert job.scheduling["queue"] and job.backend == "Auto"
    assert job.data.source == {"persistentVolumeClaim": {"claimName": "datasets"}}


def test_with_defaults_is_idempotent_and_ignores_key_order(example_spec):
    spec = example_spec
    reordered = {key: spec[key] for key in reversed(list(spec))}
    assert with_defaults(with_defaults(spec)) == with_defaults(spec)
    assert list(with_defaults(reordered)) == list(with_defaults(spec))
    assert with_defaults(None) == with_defaults({})
    assert with_defaults({"training": {"epochs": None}})["training"]["epochs"] == 10  # null counts as absent
    assert with_defaults({"model": {"numClasses": None}})["model"]["numClasses"] is None  # nullable: kept
