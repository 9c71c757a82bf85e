"""kopf's bookkeeping of each job, kept in the operator's memory instead of in the job's annotations.

kopf remembers two things per object: the essence of the last spec it handled (its "diffbase", which tells an
update from an event that changed nothing a handler cares about) and each handler's progress (retries, back-off,
permanent failure). Its default storages write both into the object's annotations, so every handled change costs
one more PATCH of the job, which the API server stores and sends to every watcher as one more event for kopf to
process again. For a new job that was one write in four and a third of the operator's CPU (docs/operator.md,
"The operator at scale").

Neither needs to outlive the process, because the reconciliation is level-based: it compares the spec with the
applied-spec annotation on the child, never with kopf's diffbase, and reads the children each time. After a
restart kopf sees every job as new and the handler brings each one in line, as controller-runtime's in-memory work
queue does. All a restart loses is the retry count of a job whose handler was failing: its back-off starts again.
A delayed retry still wakes kopf through a dummy annotation, written only then (``touch``).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from typing import Any

import kopf

PREFIX = "kubefusion.io"
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


def _copy_field(src: Any, dst: dict[str, Any], path: tuple[str, ...]) -> None:
    """Copy ``src``'s value at ``path`` (when there is one) into ``dst`` at the same path."""
    if not path or (path[0] in dst and path[0] != "metadata"):
        return  # already in the essence whole (``spec``, the field the update handler watches)
    value = src
    for part in path:
        if not isinstance(value, Mapping) or part not in value:
            return
        value = value[part]
    for part in path[:-1]:
        dst = dst.setdefault(part, {})
    dst[path[-1]] = json.loads(json.dumps(value))


def _uid(body: kopf.Body) -> str:
    return str(body.get("metadata", {}).get("uid") or "")


class MemoryDiffBaseStorage(kopf.AnnotationsDiffBaseStorage):
    """The last handled essence of each job (spec, labels, annotations), by uid, as compact JSON."""

    def __init__(self) -> None:
        super().__init__(prefix=PREFIX, key="last-handled-configuration")
        self._essences: dict[str, str] = {}
        self._lock = threading.Lock()

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        """kopf's essence (the body without status and system metadata; labels and annotations but not other
        kopf operators' or kubectl's; plus ``extra_fields``, those the change handlers watch) built for every
        event of every job. kopf's own deep-copies the whole body (status, managedFields) only to drop most of
        it; this copies just the rest, through JSON, which is several times faster than ``copy.deepcopy``."""
        meta = body.get("metadata", {})
        essence = {key: value for key, value in body.items() if key not in ("apiVersion", "kind", "metadata",
                                                                            "status")}
        kept = {key: meta[key] for key in ("labels", "annotations") if meta.get(key)}
        if kept:
            essence["metadata"] = kept
        essence = json.loads(json.dumps(essence))
        annotations = essence.get("metadata", {}).get("annotations", {})
        others = self._detect_marked_prefixes(annotations)
        for key in list(annotations):
            if key == LAST_APPLIED or any(key.startswith(f"{prefix}/") for prefix in others):
                del annotations[key]
        for field in extra_fields or ():
            _copy_field(body, essence, tuple(field))
        self.remove_annotations(essence, set(self.make_keys(self.key, body=body)))
        self.remove_empty_stanzas(essence)
        return essence

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        with self._lock:
            encoded = self._essences.get(_uid(body))
        return json.loads(encoded) if encoded is not None else None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        encoded = json.dumps(essence, separators=(",", ":"), sort_keys=True)
        with self._lock:
            self._essences[_uid(body)] = encoded

    def handled(self, uid: str) -> bool:
        """Whether kopf has finished handling this job at least once (it stores the essence then)."""
        with self._lock:
            return uid in self._essences

    def forget(self, uid: str) -> None:
        with self._lock:
            self._essences.pop(uid, None)

    def __len__(self) -> int:
        return len(self._essences)


class MemoryProgressStorage(kopf.AnnotationsProgressStorage):
    """Each handler's progress on each job, by uid and handler id. The touch (kopf's wake-up for a delayed
    retry) stays an annotation: it must reach the API server to come back as an event."""

    def __init__(self) -> None:
        super().__init__(prefix=PREFIX)
        self._records: dict[tuple[str, str], dict[str, Any]] = {}
        self._lock = threading.Lock()

    def fetch(self, *, key: Any, body: kopf.Body) -> Any:
        with self._lock:
            record = self._records.get((_uid(body), str(key)))
        return dict(record) if record is not None else None

    def store(self, *, key: Any, record: Any, body: kopf.Body, patch: kopf.Patch) -> None:
        with self._lock:
            self._records[(_uid(body), str(key))] = dict(record)

    def purge(self, *, key: Any, body: kopf.Body, patch: kopf.Patch) -> None:
        with self._lock:
            self._records.pop((_uid(body), str(key)), None)

    def clear(self, *, essence: kopf.BodyEssence) -> kopf.BodyEssence:
        """The essence without our annotations (kopf's, and ours). kopf calls this twice for every event of every
        job, on essences that are its own already (just built, or just fetched), and almost never with anything to
        remove: then it is the essence itself, else a copy of the part that changes."""
        metadata = essence.get("metadata", {})
        ours = {key for key in metadata.get("annotations", {}) if key.startswith(f"{self.prefix}/")}
        empty = any(key in metadata and not metadata[key] for key in ("labels", "annotations")) or any(
            key in essence and not essence[key] for key in ("metadata", "status"))
        if not ours and not empty:
            return essence
        essence = {**essence, "metadata": dict(metadata)} if "metadata" in essence else dict(essence)
        self.remove_annotations(essence, ours)
        self.remove_empty_stanzas(essence)
        return essence

    def known(self, uid: str) -> bool:
        """Whether kopf keeps progress of a handler for this job (one that is to be retried)."""
        with self._lock:
            return any(record[0] == uid for record in self._records)

    def forget(self, uid: str) -> None:
        with self._lock:
            for record in [record for record in self._records if record[0] == uid]:
                del self._records[record]

    def __len__(self) -> int:
        return len(self._records)
