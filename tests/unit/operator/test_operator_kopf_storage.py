"""kopf's bookkeeping kept in memory: the same essence kopf's own storages build, nothing written to the job but a
delayed retry's wake-up, and nothing kept for a deleted job."""

from __future__ import annotations

from typing import Any

import kopf
import pytest

from kubefusion_operator import kopf_storage


def job(uid: str = "uid-1", **metadata: Any) -> kopf.Body:
    return kopf.Body({
        "apiVersion": "kubefusion.io/v1alpha1", "kind": "MultimodalTrainJob",
        "metadata": {"name": "products", "namespace": "ml", "uid": uid, "resourceVersion": "7", "generation": 2,
                     "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {"f:image": {}}}}],
                     **metadata},
        "spec": {"image": "trainer:1", "data": {"path": "gs://b/", "columns": [{"name": "price"}, None]}},
        "status": {"phase": "Running", "conditions": [{"type": "SpecValid", "status": "True"}]}})


ANNOTATED = {
    "labels": {"team": "vision"},
    "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}", "example.com/owner": "ana",
                    "kubefusion.io/touch-dummy": "2026-12-05T00:00:00", "kubefusion.io/applied-spec": "{}",
                    # another kopf-based operator's storage on the same object
                    "other.example.com/kopf-managed": "yes", "other.example.com/last-handled-configuration": "{}"},
}


@pytest.mark.parametrize("extra_fields", [None, [("spec",)], [("spec",), ("status", "phase"), ("metadata", "generation"),
                                                                ("status", "absent")]])
@pytest.mark.parametrize("metadata", [{}, ANNOTATED], ids=["plain", "annotated"])
def test_the_essence_is_the_one_kopfs_own_storages_build(metadata: dict[str, Any], extra_fields: Any) -> None:
    body = job(**metadata)
    ours = kopf_storage.MemoryDiffBaseStorage().build(body=body, extra_fields=extra_fields)
    theirs = kopf.AnnotationsDiffBaseStorage(prefix="kubefusion.io", key="last-handled-configuration").build(
        body=body, extra_fields=extra_fields)
    assert ours == theirs
    cleared = kopf_storage.MemoryProgressStorage().clear(essence=ours)
    assert cleared == kopf.AnnotationsProgressStorage(prefix="kubefusion.io").clear(essence=theirs)
    assert ("status" in ours) == bool(extra_fields and len(extra_fields) > 1) and "managedFields" not in str(ours)
    ours["spec"]["data"]["path"] = "changed"  # a copy: the body is untouched
    assert body["spec"]["data"]["path"] == "gs://b/"


def test_clearing_copies_only_when_there_is_something_to_remove() -> None:
    """kopf clears two essences per event of every job; almost none hold our annotations, and copying each one
    through JSON was about 5% of the operator's CPU in a burst of new jobs."""
    storage = kopf_storage.MemoryProgressStorage()
    plain = {"spec": {"image": "trainer:1"}, "metadata": {"labels": {"team": "vision"}}}
    assert storage.clear(essence=plain) is plain
    marked = {"spec": {"image": "trainer:1"},
              "metadata": {"annotations": {"kubefusion.io/touch-dummy": "now", "example.com/owner": "ana"}}}
    cleared = storage.clear(essence=marked)
    assert cleared == {"spec": {"image": "trainer:1"}, "metadata": {"annotations": {"example.com/owner": "ana"}}}
    assert marked["metadata"]["annotations"] == {"kubefusion.io/touch-dummy": "now", "example.com/owner": "ana"}
    only_ours = {"spec": {}, "metadata": {"annotations": {"kubefusion.io/touch-dummy": "now"}}}
    assert storage.clear(essence=only_ours) == {"spec": {}}  # empty stanzas go, as in kopf's own


def test_the_diffbase_is_kept_per_job_and_never_written_to_the_job() -> None:
    storage, first, second = kopf_storage.MemoryDiffBaseStorage(), job("uid-1"), job("uid-2")
    patch = kopf.Patch()
    storage.store(body=first, patch=patch, essence=storage.build(body=first))
    assert not patch  # no PATCH of the job, no extra watch event
    assert storage.fetch(body=first) == storage.build(body=first) and storage.fetch(body=second) is None
    assert storage.handled("uid-1") and not storage.handled("uid-2")
    storage.forget("uid-1")
    assert storage.fetch(body=first) is None and len(storage) == 0


def test_progress_is_kept_per_job_and_handler_and_only_a_delayed_retry_touches_the_job() -> None:
    storage, first, second = kopf_storage.MemoryProgressStorage(), job("uid-1"), job("uid-2")
    patch = kopf.Patch()
    record = {"started": "2026-12-05T00:00:00", "retries": 2, "delayed": "2026-12-05T00:01:00"}
    storage.store(key="reconcile", record=record, body=first, patch=patch)
    storage.store(key="other", record={"retries": 0}, body=first, patch=patch)
    assert not patch
    assert storage.fetch(key="reconcile", body=first) == record
    assert storage.fetch(key="reconcile", body=second) is None
    storage.purge(key="other", body=first, patch=patch)
    assert storage.fetch(key="other", body=first) is None and not patch
    # kopf wakes a delayed handler by touching the job: that write must reach the API server to come back.
    storage.touch(body=first, patch=patch, value="2026-12-05T00:01:00")
    assert patch["metadata"]["annotations"]["kubefusion.io/touch-dummy"] == "2026-12-05T00:01:00"
    storage.forget("uid-1")
    assert storage.fetch(key="reconcile", body=first) is None and len(storage) == 0
