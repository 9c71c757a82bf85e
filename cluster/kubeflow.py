"""Kubeflow Trainer v2, JobSet and Kueue on the test control plane (cluster/controlplane.py), each from the
binary and the manifests cluster/build.py took from its Go module, with its admission webhooks served on
127.0.0.1 (the way controller-runtime's envtest serves them), so that their defaulting and validation run.

Each controller runs out of cluster as admin, with a configuration file of its own: leader election off, the
webhook server on a free loopback port with a certificate from the control plane's CA (their own certificate
rotators off: nothing in the cluster could reach a Service in front of them), metrics off, health probes on
loopback. Webhook configurations keep the upstream rules and failure policies; only their names (all three
projects call theirs ``mutating-webhook-configuration``) and client configs change. Kueue's CRDs get their
conversion webhook as upstream's kustomization adds it, pointed at the same loopback server.

    install_jobset(cp); install_trainer(cp)      # a Trainer v2 cluster (TrainJob on JobSet)
    install_kueue(cp, frameworks=KUEUE_FRAMEWORKS)
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from controlplane import Controller, ControlPlane, _documents, wait_until

JOBSET_CRD = "jobsets.jobset.x-k8s.io"
TRAINER_CRDS = ("trainjobs.trainer.kubeflow.org", "trainingruntimes.trainer.kubeflow.org",
                "clustertrainingruntimes.trainer.kubeflow.org")
KUEUE_FRAMEWORKS = ("trainer.kubeflow.org/trainjob", "kubeflow.org/pytorchjob")
"""Kueue integrations for kubefusion's two backends. Kueue 0.19's shipped configuration turns the PyTorchJob one
off: a cluster that queues PyTorchJobs must name it, as here."""
KUEUE_NAMESPACE = "kueue-system"
KUEUE_METRICS_CERTS = Path("/etc/kueue/metrics/certs")
"""Where Kueue 0.19 insists on a metrics certificate once its own certificate management is off (a fixed path in
its main.go, read even with metrics off)."""
# Kueue's webhooks for what these tests queue: its own objects and the two training-job kinds. The others
# (pods, Jobs, Deployments, ...) are left out, so Kueue is in the path of nothing else on the cluster.
_KUEUE_WEBHOOK_PATHS = ("kueue-x-k8s-io", "trainer-kubeflow-org", "kubeflow-org-v1-pytorchjob")


def _renamed(documents: Iterable[dict[str, Any]], prefix: str) -> list[dict[str, Any]]:
    """Webhook configurations named after their project: upstream's kustomizations prefix the names, and the
    three projects' bases all use the same two."""
    out = []
    for doc in documents:
        doc = copy.deepcopy(doc)
        if doc.get("kind", "").endswith("WebhookConfiguration"):
            doc["metadata"]["name"] = f"{prefix}-{doc['metadata']['name']}"
        out.append(doc)
    return out


def _config(api_version: str, cert_management: str, *, cert_dir: bool = True,
            **settings: Any) -> str:
    """A controller-runtime manager's configuration file for :meth:`ControlPlane.start_controller`: leader election,
    its own certificate management (``cert_management``: the key it is under) and metrics off, webhooks on the
    loopback port (from ``cert_dir``, or from $TMPDIR where the controller has no such setting), health probes on
    loopback, and ``settings`` (more top-level keys)."""
    webhook = "host: 127.0.0.1, port: {webhook_port}" + (", certDir: {cert_dir}" if cert_dir else "")
    fixed = (f"apiVersion: {api_version}\nkind: Configuration\nleaderElection: {{{{leaderElect: false}}}}\n"
             f"{cert_management}: {{{{enable: false}}}}\nwebhook: {{{{{webhook}}}}}\nmetrics: {{{{bindAddress: '0'}}}}\n"
             "health: {{healthProbeBindAddress: '127.0.0.1:{probe_port}'}}\n")
    more = yaml.safe_dump(settings, sort_keys=False) if settings else ""
    return fixed + more.replace("{", "{{").replace("}", "}}")


def _start(cp: ControlPlane, name: str, argv: list[str], config: str, webhooks: list[dict[str, Any]], *,
           env: dict[str, str] | None = None, cert_dir: Path | None = None) -> Controller:
    return cp.start_controller(name, argv, webhooks=webhooks, config=config, env=env, cert_dir=cert_dir)


# -------------------------------------------------------------------------------------------------- JobSet




def install_jobset(cp: ControlPlane) -> Controller:
    """JobSet v0.12: its CRD, its (mutating and validating) webhooks for JobSets and pods, its controller."""
    manifests = cp.manifests("jobset")
    cp.apply(*_documents(manifests / "crd" / "bases" / "jobset.x-k8s.io_jobsets.yaml"))
    cp.wait_established(JOBSET_CRD)
    webhooks = _renamed(_documents(manifests / "webhook" / "manifests.yaml"), "jobset")
    return _start(cp, "jobset", [cp.binary("jobset-controller-manager"), "--config={config}",
                                 "--zap-log-level=info"],
                  _config("config.jobset.x-k8s.io/v1alpha1", "internalCertManagement"), webhooks)


# ------------------------------------------------------------------------------------------------- Trainer




def install_trainer(cp: ControlPlane) -> Controller:
    """Kubeflow Trainer v2.3: its CRDs (TrainJob, TrainingRuntime, ClusterTrainingRuntime), its webhooks and its
    controller manager. Needs JobSet (:func:`install_jobset`). Trainer's webhook server has no certificate
    setting: it reads ``$TMPDIR/k8s-webhook-server/serving-certs``, so TMPDIR is a folder of its own."""
    manifests = cp.manifests("trainer") / "base"
    for path in sorted((manifests / "crds").glob("trainer.kubeflow.org_*.yaml")):
        cp.apply(*_documents(path))
    for crd in TRAINER_CRDS:
        cp.wait_established(crd)
    webhooks = _renamed(_documents(manifests / "webhook" / "manifests.yaml"), "trainer")
    tmp = cp.root / "trainer" / "tmp"
    return _start(cp, "trainer", [cp.binary("trainer-controller-manager"), "--config={config}",
                                  "--zap-log-level=info"],
                  _config("config.trainer.kubeflow.org/v1alpha1", "certManagement", cert_dir=False), webhooks,
                  env={"TMPDIR": str(tmp)}, cert_dir=tmp / "k8s-webhook-server" / "serving-certs")


# --------------------------------------------------------------------------------------------------- Kueue




def _kueue_crds(manifests: Path) -> list[dict[str, Any]]:
    """Kueue's CRDs with the conversion webhooks its kustomization patches in (v1beta1 <-> v1beta2)."""
    patches = {}
    kustomization = yaml.safe_load((manifests / "crd" / "kustomization.yaml").read_text())
    for entry in kustomization.get("patches") or ():
        patch = yaml.safe_load((manifests / "crd" / entry["path"]).read_text())
        patches[patch["metadata"]["name"]] = patch["spec"]["conversion"]
    crds = []
    for resource in kustomization["resources"]:
        for crd in _documents(manifests / "crd" / resource):
            if crd["metadata"]["name"] in patches:
                crd["spec"]["conversion"] = copy.deepcopy(patches[crd["metadata"]["name"]])
            crds.append(crd)
    return crds


def install_kueue(cp: ControlPlane, frameworks: Iterable[str] = KUEUE_FRAMEWORKS) -> Controller:
    """Kueue 0.19 with the integrations ``frameworks`` enabled: its CRDs (conversion webhooks on loopback), its
    webhooks for its own objects and those kinds, and its controller manager. The kinds' CRDs must be installed
    first (Kueue skips an integration whose CRD it does not find)."""
    frameworks = list(frameworks)
    manifests = cp.manifests("kueue")
    if not (KUEUE_METRICS_CERTS / "tls.crt").exists():
        try:
            cp.serving_cert(KUEUE_METRICS_CERTS)
        except PermissionError as e:
            raise RuntimeError(f"Kueue needs a certificate at {KUEUE_METRICS_CERTS} (a path fixed in its code) and "
                               f"this user cannot write there: {e}") from e
    cp.kubectl("create", "namespace", KUEUE_NAMESPACE, check=False)
    crds = _kueue_crds(manifests)
    webhooks = [doc for doc in _renamed(_documents(manifests / "webhook" / "manifests.yaml"), "kueue")]
    for doc in webhooks:
        doc["webhooks"] = [hook for hook in doc.get("webhooks") or []
                           if any(part in hook["clientConfig"]["service"]["path"] for part in _KUEUE_WEBHOOK_PATHS)]
    # Kueue sets up its indexes at start-up, so its CRDs are served first (without conversion: Kueue itself uses
    # only v1beta2); start_controller applies them again, their conversion webhooks pointed at Kueue's server.
    cp.apply(*[{**crd, "spec": {k: v for k, v in crd["spec"].items() if k != "conversion"}} for crd in crds])
    for crd in crds:
        cp.wait_established(crd["metadata"]["name"])
    controller = _start(cp, "kueue", [cp.binary("kueue-controller-manager"), "--config={config}",
                                      "--zap-log-level=2"],
                        _config("config.kueue.x-k8s.io/v1beta2", "internalCertManagement",
                                namespace=KUEUE_NAMESPACE, manageJobsWithoutQueueName=False,
                                featureGates={"VisibilityOnDemand": False},  # no aggregated API server
                                integrations={"frameworks": frameworks}),
                        [*crds, *webhooks])
    return controller


def wait_serving(cp: ControlPlane, resource: str, timeout: float = 60) -> None:
    """Wait until ``kubectl get <resource>`` answers (discovery has the kind)."""
    wait_until(lambda: cp.kubectl("get", resource, "-A", "-o", "name", check=False).returncode == 0, timeout,
               f"{resource} to be served")
