"""Blocking Kubernetes API calls, with the official ``kubernetes`` client.

The handlers that use these are plain (sync) functions: kopf runs them in its thread pool, so the event loop
never waits on the network. API failures are translated into kopf's retry vocabulary in one place
(:func:`retryable`) so that no handler loses an error or retries one that cannot succeed.
"""

from __future__ import annotations

import json
import threading
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


def custom() -> kubernetes.client.CustomObjectsApi:
    return kubernetes.client.CustomObjectsApi(client())


def core() -> kubernetes.client.CoreV1Api:
    return kubernetes.client.CoreV1Api(client())


def served(backend: Backend) -> bool:
    """Whether the API server serves the backend's resource (``kubeflow.org/v1`` ``pytorchjobs``,
    ``trainer.kubeflow.org/v1alpha1`` ``trainjobs``): whether its CRD is installed."""
    try:
        resources = custom().get_api_resources(backend.group, backend.version, _request_timeout=REQUEST_TIMEOUT)
    except ApiException as e:
        if e.status == 404:
            return False
        raise
    return any(r.name == backend.plural for r in resources.resources or [])


def get_training_runtime(name: str) -> dict[str, Any]:
    """The ClusterTrainingRuntime ``name`` (TrainJobs run on it); :class:`NotFound` when it or its CRD is
    missing."""
    try:
        return custom().get_cluster_custom_object(api.TRAINER_GROUP, api.TRAINER_VERSION,
                                                  api.CLUSTER_TRAINING_RUNTIMES, name, _request_timeout=REQUEST_TIMEOUT)
    except ApiException as e:
        if e.status == 404:
            raise NotFound(f"{api.CLUSTER_TRAINING_RUNTIME_KIND} {name}") from e
        raise


# -------------------------------------------------------------------------------- MultimodalTrainJobs


def get_job(namespace: str, name: str) -> dict[str, Any]:
    try:
        return custom().get_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.PLURAL, name,
                                                     _request_timeout=REQUEST_TIMEOUT)
    except ApiException as e:
        if e.status == 404:
            raise NotFound(f"{api.KIND} {namespace}/{name}") from e
        raise


def patch_job_status(namespace: str, name: str, status: dict[str, Any], resource_version: str) -> dict[str, Any]:
    """Merge-patch ``status``, only if the job is still at ``resource_version`` (else 409: re-read, retry)."""
    body = {"metadata": {"resourceVersion": resource_version}, "status": status}
    return custom().patch_namespaced_custom_object_status(api.GROUP, api.VERSION, namespace, api.PLURAL, name,
                                                          body, _request_timeout=REQUEST_TIMEOUT)


# ---------------------------------------------------------------------------------------- children


def get_child(backend: Backend, namespace: str, name: str) -> dict[str, Any]:
    """The backend's child (PyTorchJob, TrainJob) ``name``; :class:`NotFound` when it, or its CRD, is missing."""
    try:
        return custom().get_namespaced_custom_object(backend.group, backend.version, namespace, backend.plural, name,
                                                     _request_timeout=REQUEST_TIMEOUT)
    except ApiException as e:
        if e.status == 404:
            raise NotFound(f"{backend.kind} {namespace}/{name}") from e
        raise


def create_child(backend: Backend, body: dict[str, Any]) -> dict[str, Any]:
    return custom().create_namespaced_custom_object(
        backend.group, backend.version, body["metadata"]["namespace"], backend.plural, body,
        _request_timeout=REQUEST_TIMEOUT)


def patch_child(backend: Backend, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
    return custom().patch_namespaced_custom_object(
        backend.group, backend.version, namespace, backend.plural, name, patch, _request_timeout=REQUEST_TIMEOUT)


def workloads_owned_by(namespace: str, owner_uid: str) -> list[tuple[str, dict[str, Any]]]:
    """Kueue's Workloads in ``namespace`` whose owner has ``owner_uid``, each with the API version it was read
    at (the newest the cluster serves); none when Kueue is not installed."""
    for version in api.KUEUE_VERSIONS:
        try:
            listed = custom().list_namespaced_custom_object(api.KUEUE_GROUP, version, namespace, api.KUEUE_WORKLOADS,
                                                            _request_timeout=REQUEST_TIMEOUT)
        except ApiException as e:
            if e.status == 404:
                continue
            raise
        return [(version, item) for item in listed.get("items") or []
                if any(ref.get("uid") == owner_uid for ref in item["metadata"].get("ownerReferences") or [])]
    return []


def patch_workload(version: str, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
    return custom().patch_namespaced_custom_object(api.KUEUE_GROUP, version, namespace, api.KUEUE_WORKLOADS, name,
                                                   patch, _request_timeout=REQUEST_TIMEOUT)


def _read_core(read: Any, kind: str, namespace: str, name: str) -> dict[str, Any]:
    """One core/v1 object as plain JSON data; :class:`NotFound` when it does not exist."""
    try:
        found = read(name, namespace, _request_timeout=REQUEST_TIMEOUT)
    except ApiException as e:
        if e.status == 404:
            raise NotFound(f"{kind} {namespace}/{name}") from e
        raise
    return client().sanitize_for_serialization(found)


def get_configmap(namespace: str, name: str) -> dict[str, Any]:
    return _read_core(core().read_namespaced_config_map, "ConfigMap", namespace, name)


def create_configmap(body: dict[str, Any]) -> dict[str, Any]:
    created = core().create_namespaced_config_map(body["metadata"]["namespace"], body,
                                                  _request_timeout=REQUEST_TIMEOUT)
    return client().sanitize_for_serialization(created)


def patch_configmap(namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
    patched = core().patch_namespaced_config_map(name, namespace, patch, _request_timeout=REQUEST_TIMEOUT)
    return client().sanitize_for_serialization(patched)


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
    return custom().patch_namespaced_custom_object_status(api.GROUP, api.VERSION, namespace, api.PLURAL, name,
                                                          {"status": fields}, _request_timeout=REQUEST_TIMEOUT)


def review_token(token: str, audience: str) -> dict[str, Any]:
    """The API server's TokenReview of ``token`` for ``audience``: ``status`` with ``authenticated``, ``user``
    (``username``, ``extra`` naming the pod a bound token belongs to) and ``error``."""
    review = kubernetes.client.V1TokenReview(
        spec=kubernetes.client.V1TokenReviewSpec(token=token, audiences=[audience]))
    answer = kubernetes.client.AuthenticationV1Api(client()).create_token_review(
        review, _request_timeout=REQUEST_TIMEOUT)
    return client().sanitize_for_serialization(answer)


def get_pod(namespace: str, name: str) -> dict[str, Any]:
    return _read_core(core().read_namespaced_pod, "Pod", namespace, name)
