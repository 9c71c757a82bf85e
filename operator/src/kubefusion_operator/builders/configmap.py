"""The ConfigMap ``<job>-config`` holding the trainer's ``job.yaml`` (pure)."""

from __future__ import annotations

import posixpath
from typing import Any

import yaml

from kubefusion_operator import api
from kubefusion_operator.builders.common import child_metadata, job_name, job_namespace
from kubefusion_operator.builders.defaults import with_defaults

# libyaml's emitter where PyYAML has it (the same document; only the line breaks of a long quoted string
# may differ): every reconciliation renders job.yaml, and with the pure-Python emitter that was a tenth of
# the operator's CPU time (benchmarks/operator_scale.py).
_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)

OPERATOR_ONLY_FIELDS = ("backend", "scheduling", "runPolicy", "storage")
"""Spec fields only the operator reads; leaving them out of ``job.yaml`` keeps the trainer's view stable
when ``runPolicy.suspend`` or a limit changes."""


def mounted_data_path(path: str) -> str:
    """Where a dataset path inside the data volume appears in the pod: ``products/`` -> ``/data/products``."""
    return posixpath.normpath(posixpath.join(api.DATA_DIR, path.lstrip("/")))


def is_volume_path(path: str | None) -> bool:
    """A path inside the data volume (not a URI, not ``builtin:...``)."""
    return bool(path) and not api.URI_RE.match(path) and not path.startswith(api.BUILTIN_PREFIX)


def trainer_job_document(spec: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """The MultimodalTrainJob document the pods read: the defaulted spec without operator-only fields, with
    ``data.path`` and ``data.oodPath`` rewritten to ``/data/...`` when the data comes from a volume. URIs
    (``gs://``, ``s3://``, ...) and ``builtin:demo`` are left alone."""
    spec = with_defaults(spec)
    for key in OPERATOR_ONLY_FIELDS:
        spec.pop(key, None)
    data = spec["data"]
    if data.get("source"):
        for key in ("path", "oodPath"):
            if is_volume_path(data.get(key)):
                data[key] = mounted_data_path(data[key])
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": {"name": job_name(meta), "namespace": job_namespace(meta)},
        "spec": spec,
    }


def build_configmap(spec: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """ConfigMap ``<job>-config`` with key ``job.yaml`` (mounted at ``/etc/kubefusion/job.yaml``).

    ``meta`` is the MultimodalTrainJob's metadata (``name``, ``namespace``, ``uid``); the ConfigMap is owned
    by it. The YAML is deterministic (keys in spec order), so an unchanged job renders byte-identical.
    """
    document = trainer_job_document(spec, meta)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": child_metadata(meta, api.config_map_name(job_name(meta)), api.COMPONENT_CONFIG),
        "data": {api.CONFIG_KEY: yaml.dump(document, Dumper=_DUMPER, sort_keys=False, default_flow_style=False)},
    }
