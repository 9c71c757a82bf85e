"""Metadata every child object carries: names, labels and the owner reference (pure)."""

from __future__ import annotations

from typing import Any

from kubefusion_operator import api


def job_name(meta: dict[str, Any]) -> str:
    return str(meta["name"])


def job_namespace(meta: dict[str, Any]) -> str:
    return str(meta.get("namespace") or "default")


def child_labels(meta: dict[str, Any], component: str) -> dict[str, str]:
    """Labels on a child object (and the PyTorchJob's pod templates): select by ``kubefusion.io/job-name``."""
    name = job_name(meta)
    return {
        api.LABEL_JOB_NAME: name,
        api.LABEL_COMPONENT: component,
        api.LABEL_APP_NAME: api.APP_NAME,
        api.LABEL_APP_INSTANCE: name,
        api.LABEL_APP_COMPONENT: component,
        api.LABEL_APP_PART_OF: api.APP_NAME,
        api.LABEL_APP_MANAGED_BY: api.MANAGER_NAME,
    }


def owner_reference(meta: dict[str, Any]) -> dict[str, Any]:
    """The MultimodalTrainJob as controlling owner: deleting it deletes the children (foreground deletion
    waits for them). Raises ``ValueError`` without ``meta.uid``: an owner reference needs it."""
    uid = meta.get("uid")
    if not uid:
        raise ValueError(f"metadata.uid of {api.KIND} {job_name(meta)!r} is required for owner references")
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "name": job_name(meta),
        "uid": str(uid),
        "controller": True,
        "blockOwnerDeletion": True,
    }


def child_metadata(meta: dict[str, Any], name: str, component: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": job_namespace(meta),
        "labels": child_labels(meta, component),
        "ownerReferences": [owner_reference(meta)],
    }
