"""Blocking Kubernetes API calls, with the official ``kubernetes`` client.

The handlers that use these are plain (sync) functions: kopf runs them in its thread pool, so the event loop
never waits on the network. API failures are translated into kopf's retry vocabulary in one place
(:func:`retryable`) so that no handler loses an error or retries one that cannot succeed.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import kopf
import kubernetes
import urllib3
from kubernetes.client.rest import ApiException

from kubefusion_operator import api
from kubefusion_operator.backends import Backend

_lock = threading.Lock()
REQUEST_TIMEOUT = (10, 60)
"""(connect, read) seconds for every call: a stuck API server fails the call instead of a worker thread."""


class NotFound(Exception):
    """The object does not exist (HTTP 404 for a resource the server serves)."""


_client: kubernetes.client.ApiClient | None = None


def client() -> kubernetes.client.ApiClient:
    """One API client per process: in-cluster credentials, else the kubeconfig (``$KUBECONFIG``, ~/.kube).
    Raises ``kubernetes.config.ConfigException`` when there are neither."""
    global _client
    with _lock:
        if _client is None:
            configuration = kubernetes.client.Configuration()
            try:
                kubernetes.config.load_incluster_config(client_configuration=configuration)
            except kubernetes.config.ConfigException:
                kubernetes.config.load_kube_config(client_configuration=configuration)
            _client = kubernetes.client.ApiClient(configuration)
        return _client


def _request(method: str, path: str, body: Any = None, *,
             content_type: str = "application/json") -> dict[str, Any]:
    """One request to the API server with the client's credentials and connections, answered as plain JSON data;
    a status other than 2xx raises ``ApiException`` as the client's typed API classes do.

    Every call of the operator goes through here rather than through ``CustomObjectsApi``, ``CoreV1Api`` or
    ``AuthenticationV1Api``. Since the client's move to pydantic (v36), the first use of a typed core API builds a
    model class for every type of its API group: seconds of CPU and tens of MiB of resident memory for good, for
    the three kinds the operator reads (docs/operator.md, "The operator at scale"). The typed custom-object API
    costs no such start, but each of its calls is validated by pydantic and goes through generated code on top of
    this same path: a tenth more client CPU per request, for nothing the operator uses."""
    api = client()
    headers = {"Accept": "application/json"}
    if body is not None:
        headers["Content-Type"] = content_type
    request = api.param_serialize(method=method, resource_path=path, header_params=headers, body=body,
                                  auth_settings=["BearerToken"])
    response = api.call_api(*request, _request_timeout=REQUEST_TIMEOUT)
    response.read()
    return api.response_deserialize(response, {"2XX": "object"}).data


MERGE_PATCH = "application/merge-patch+json"
"""What a patch of a custom resource is (they take no strategic merge): RFC 7386, ``None`` removes a key."""


def _custom(group: str, version: str, namespace: str | None, plural: str, name: str = "", subresource: str = "") -> str:
    """The path of a custom resource (or of its collection, without ``name``)."""
    path = f"/apis/{group}/{version}" + (f"/namespaces/{namespace}" if namespace else "") + f"/{plural}"
    return path + (f"/{name}" if name else "") + (f"/{subresource}" if subresource else "")


DISCOVERY_SECONDS = 2.0
"""How long an answer to "is this backend's API served?" is reused. Every job without a child asks it (the
backend is chosen then, and an orphan child is looked for only where one can exist): a burst of 500 new jobs
asks once per backend and period instead of 1000 times, while a CRD installed meanwhile is seen within
seconds (a job waiting for its backend retries after ``--backend-retry-seconds``, 15 s by default)."""
_discovery: dict[tuple[str, str], tuple[float, frozenset[str]]] = {}
"""(group, version) -> when it was asked, and the resources (plurals) it served then."""
_discovery_lock = threading.Lock()


def served(backend: Backend) -> bool:
    """Whether the API server serves the backend's resource (``kubeflow.org/v1`` ``pytorchjobs``,
    ``trainer.kubeflow.org/v1alpha1`` ``trainjobs``): whether its CRD is installed. Within
    :data:`DISCOVERY_SECONDS` of the last answer for its group and version, that answer."""
    key, now = (backend.group, backend.version), time.monotonic()
    with _discovery_lock:
        asked, plurals = _discovery.get(key, (float("-inf"), frozenset()))
    if now - asked >= DISCOVERY_SECONDS:
        try:
            resources = _request("GET", f"/apis/{backend.group}/{backend.version}").get("resources") or []
        except ApiException as e:
            if e.status != 404:
                raise
            resources = []
        plurals = frozenset(resource.get("name") for resource in resources)
        with _discovery_lock:
            _discovery[key] = (now, plurals)
    return backend.plural in plurals


def forget_discovery() -> None:
    """Ask the API server again next time (a create answered 404: the CRD went away)."""
    with _discovery_lock:
        _discovery.clear()


def get_training_runtime(name: str) -> dict[str, Any]:
    """The ClusterTrainingRuntime ``name`` (TrainJobs run on it); :class:`NotFound` when it or its CRD is
    missing."""
    try:
        return _request("GET", _custom(api.TRAINER_GROUP, api.TRAINER_VERSION, None, api.CLUSTER_TRAINING_RUNTIMES,
                                       name))
    except ApiException as e:
        if e.status == 404:
            raise NotFound(f"{api.CLUSTER_TRAINING_RUNTIME_KIND} {name}") from e
        raise


# -------------------------------------------------------------------------------- MultimodalTrainJobs


def get_job(namespace: str, name: str) -> dict[str, Any]:
    try:
        return _request("GET", _custom(api.GROUP, api.VERSION, namespace, api.PLURAL, name))
    except ApiException as e:
        if e.status == 404:
            raise NotFound(f"{api.KIND} {namespace}/{name}") from e
        raise


def patch_job_status(namespace: str, name: str, status: dict[str, Any], resource_version: str) -> dict[str, Any]:
    """Merge-patch ``status``, only if the job is still at ``resource_version`` (else 409: re-read, retry)."""
    body = {"metadata": {"resourceVersion": resource_version}, "status": status}
    return _request("PATCH", _custom(api.GROUP, api.VERSION, namespace, api.PLURAL, name, "status"), body,
                    content_type=MERGE_PATCH)


# ---------------------------------------------------------------------------------------- children


def get_child(backend: Backend, namespace: str, name: str) -> dict[str, Any]:
    """The backend's child (PyTorchJob, TrainJob) ``name``; :class:`NotFound` when it, or its CRD, is missing."""
    try:
        return _request("GET", _custom(backend.group, backend.version, namespace, backend.plural, name))
    except ApiException as e:
        if e.status == 404:
            raise NotFound(f"{backend.kind} {namespace}/{name}") from e
        raise


def create_child(backend: Backend, body: dict[str, Any]) -> dict[str, Any]:
    return _request("POST", _custom(backend.group, backend.version, body["metadata"]["namespace"], backend.plural),
                    body)


def patch_child(backend: Backend, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
    return _request("PATCH", _custom(backend.group, backend.version, namespace, backend.plural, name), patch,
                    content_type=MERGE_PATCH)


def workloads_owned_by(namespace: str, owner_uid: str) -> list[tuple[str, dict[str, Any]]]:
    """Kueue's Workloads in ``namespace`` whose owner has ``owner_uid``, each with the API version it was read
    at (the newest the cluster serves); none when Kueue is not installed."""
    for version in api.KUEUE_VERSIONS:
        try:
            listed = _request("GET", _custom(api.KUEUE_GROUP, version, namespace, api.KUEUE_WORKLOADS))
        except ApiException as e:
            if e.status == 404:
                continue
            raise
        return [(version, item) for item in listed.get("items") or []
                if any(ref.get("uid") == owner_uid for ref in item["metadata"].get("ownerReferences") or [])]
    return []


def patch_workload(version: str, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
    return _request("PATCH", _custom(api.KUEUE_GROUP, version, namespace, api.KUEUE_WORKLOADS, name), patch,
                    content_type=MERGE_PATCH)


def _core_v1(namespace: str, plural: str, name: str = "") -> str:
    return f"/api/v1/namespaces/{namespace}/{plural}" + (f"/{name}" if name else "")


def _read_core(kind: str, plural: str, namespace: str, name: str) -> dict[str, Any]:
    """One core/v1 object; :class:`NotFound` when it does not exist."""
    try:
        return _request("GET", _core_v1(namespace, plural, name))
    except ApiException as e:
        if e.status == 404:
            raise NotFound(f"{kind} {namespace}/{name}") from e
        raise


def get_configmap(namespace: str, name: str) -> dict[str, Any]:
    return _read_core("ConfigMap", "configmaps", namespace, name)


def create_configmap(body: dict[str, Any]) -> dict[str, Any]:
    return _request("POST", _core_v1(body["metadata"]["namespace"], "configmaps"), body)


def patch_configmap(namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
    return _request("PATCH", _core_v1(namespace, "configmaps", name), patch,
                 content_type="application/strategic-merge-patch+json")


# ------------------------------------------------------------------------------------------ errors


def error_reason(error: BaseException) -> str:
    """A short label for metrics and messages: ``ApiError409``, ``Unreachable``."""
    if isinstance(error, ApiException):
        return f"ApiError{error.status}"
    return "Unreachable"


def retryable(error: BaseException, *, delay: float) -> kopf.TemporaryError | kopf.PermanentError:
    """What kopf should do about an API failure: retry conflicts, throttling, server errors and network
    failures later; give up on requests the server will never accept (400, 422...). A 403 (quota, RBAC) can be
    fixed without changing the job: the reconcile handler retries it itself before asking here."""
    if isinstance(error, ApiException):
        message = describe(error)
        if error.status in (409, 429) or error.status >= 500:
            return kopf.TemporaryError(message, delay=delay)
        return kopf.PermanentError(message)
    return kopf.TemporaryError(f"Kubernetes API unreachable: {error}", delay=delay)


API_FAILURES = (ApiException, urllib3.exceptions.HTTPError, OSError)
"""What a call can raise besides :class:`NotFound`: an API error status, a timeout, a refused connection."""


def describe(error: ApiException) -> str:
    """One line for conditions and logs: status code, reason and the server's message."""
    return f"Kubernetes API answered {error.status} {error.reason}: {_message(error)}"


def _message(error: ApiException) -> str:
    try:
        return str(json.loads(error.body or "{}").get("message") or error.body)
    except ValueError:
        return str(error.body)


# ------------------------------------------------------------------------------------ progress reports


def merge_job_status(namespace: str, name: str, fields: dict[str, Any]) -> dict[str, Any]:
    """JSON-merge-patch these status fields and nothing else (no resourceVersion: the progress fields are
    written by the progress writer alone, so there is nothing to lose to a concurrent writer)."""
    return _request("PATCH", _custom(api.GROUP, api.VERSION, namespace, api.PLURAL, name, "status"),
                    {"status": fields}, content_type=MERGE_PATCH)


def review_token(token: str, audience: str) -> dict[str, Any]:
    """The API server's TokenReview of ``token`` for ``audience``: ``status`` with ``authenticated``, ``user``
    (``username``, ``extra`` naming the pod a bound token belongs to) and ``error``."""
    review = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
              "spec": {"token": token, "audiences": [audience]}}
    return _request("POST", "/apis/authentication.k8s.io/v1/tokenreviews", review)


def get_pod(namespace: str, name: str) -> dict[str, Any]:
    return _read_core("Pod", "pods", namespace, name)
