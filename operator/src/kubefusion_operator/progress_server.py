"""The operator's progress endpoint: trainers post reports, the operator writes them into the jobs' status.

Three parts, each testable alone:

- :class:`ProgressStore` (no I/O, clocks injected): the newest checked report of each job and what the resource
  shows. :meth:`ProgressStore.due` decides which status writes to make now: a job's newest report at most once
  per ``write_seconds`` (12 s by default) whatever the number of ranks or reports, and a stale mark for a job
  whose reports stopped (none for ``stale_seconds``, 60 by default) while it is not finished.
- :class:`TokenAuthenticator` (blocking; run on a thread): a report carries the projected service-account
  token of the pod that sent it, with the job's own audience (:func:`kubefusion_operator.progress.audience`).
  A TokenReview proves the token; the pod it is bound to must be in the job's namespace, still exist with the
  same uid, and carry the job's label ``kubefusion.io/job-name``. Proven tokens are remembered for 5 minutes
  (at most until they expire), so a job costs the API server one TokenReview and one pod read per 5 minutes.
- :class:`ProgressServer`: the aiohttp application on kopf's event loop (every blocking call goes to a thread
  pool of its own), and the writer task that carries out :meth:`ProgressStore.due` every second.

Nothing of this is needed for the operator's own work: when the endpoint is down or a trainer cannot reach it,
training goes on and the status says since when the progress is stale.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import datetime
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from kubefusion_operator import api, kube, metrics
from kubefusion_operator.progress import (MAX_REPORT_BYTES, ROUTE, ReportError, audience, parse_report,
                                          seconds_since, stale_fields, status_fields)

log = logging.getLogger(__name__)

Key = tuple[str, str]
"""(namespace, name) of a MultimodalTrainJob."""

TERMINAL_PHASES = ("Succeeded", "Failed")
AUTH_CACHE_SECONDS = 300.0
MAX_PENDING_REVIEWS = 64
"""Requests waiting for a TokenReview beyond this are refused (503): a flood of bad tokens cannot queue up
unbounded work for the API server."""


def utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def rfc3339(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


# ------------------------------------------------------------------------------------------- the store


@dataclass
class _Job:
    report: dict[str, Any] | None = None
    """The newest checked report not written yet."""
    received: str | None = None
    """When the newest report came (RFC 3339, the operator's clock)."""
    sequence: int = 0
    """Counts reports, so that a write finishing after a newer report came does not discard that one."""
    written_at: float | None = None
    """Monotonic time of the last write attempt (success or not): the next waits ``write_seconds``."""
    in_flight: bool = False
    status: dict[str, Any] = field(default_factory=dict)
    """The job's status as the last watch event showed it."""
    spec: dict[str, Any] = field(default_factory=dict)
    stale_marked: bool = False


@dataclass(frozen=True)
class Write:
    """One status write: ``fields`` merge-patched into the status of the job ``key``."""

    key: Key
    kind: str
    """``progress`` (a report) or ``stale``."""
    fields: dict[str, Any]
    sequence: int


class ProgressStore:
    """The newest report per job and the throttle; thread-safe (the endpoint, the watch and the writer share
    it)."""

    def __init__(self, *, write_seconds: float = 12.0, stale_seconds: float = 60.0,
                 monotonic: Callable[[], float] = time.monotonic,
                 now: Callable[[], datetime.datetime] = utc_now) -> None:
        self.write_seconds, self.stale_seconds = write_seconds, stale_seconds
        self._monotonic, self._now = monotonic, now
        self._started = monotonic()
        """No job is written within ``write_seconds`` of the start: the operator this one replaces may have
        written it just before it stopped, and the limit holds across restarts too."""
        self._jobs: dict[Key, _Job] = {}
        self._lock = threading.Lock()

    def accept(self, key: Key, report: dict[str, Any]) -> None:
        """A checked report of an authenticated pod of the job."""
        with self._lock:
            job = self._jobs.setdefault(key, _Job())
            job.report, job.received = report, rfc3339(self._now())
            job.sequence += 1
            job.stale_marked = False

    def wants(self, key: Key, status: Any) -> bool:
        """Whether :meth:`observe` would keep anything of a job with this status (most jobs, most of the time:
        not): a job it knows, or one that shows progress."""
        with self._lock:
            return key in self._jobs or bool(status.get("progress"))

    def observe(self, key: Key, body: dict[str, Any] | None) -> None:
        """The job as a watch event shows it (None: deleted). A finished job with nothing left to write, and a
        job that never showed progress, are not kept."""
        with self._lock:
            if body is None:
                self._jobs.pop(key, None)
                return
            status = dict(body.get("status") or {})
            job = self._jobs.get(key)
            if job is None and not status.get("progress"):
                return
            job = self._jobs.setdefault(key, _Job())
            job.status, job.spec = status, dict(body.get("spec") or {})
            if (status.get("progress") or {}).get("stale"):
                job.stale_marked = True
            if status.get("phase") in TERMINAL_PHASES and job.report is None and not job.in_flight:
                del self._jobs[key]

    def due(self, limit: int) -> list[Write]:
        """The writes to make now, so that at most ``limit`` are in flight; each stays in flight until
        :meth:`done`. Jobs that wait longest come first."""
        now, wall = self._monotonic(), self._now()
        writes: list[Write] = []
        with self._lock:
            free = limit - sum(1 for job in self._jobs.values() if job.in_flight)
            waiting = sorted(self._jobs.items(), key=lambda item: item[1].written_at or self._started)
            for key, job in waiting:
                if len(writes) >= free:
                    break
                last = job.written_at if job.written_at is not None else self._started
                if job.in_flight or now - last < self.write_seconds:
                    continue
                if job.report is not None:
                    fields = status_fields(job.report, received=job.received or rfc3339(wall), spec=job.spec)
                    writes.append(Write(key, "progress", fields, job.sequence))
                elif self._stale(job, wall):
                    writes.append(Write(key, "stale", stale_fields(job.status), job.sequence))
                else:
                    continue
                job.in_flight, job.written_at = True, now
        return writes

    def _stale(self, job: _Job, wall: datetime.datetime) -> bool:
        # With its results the run is over: no report is to come, and the last one is final, not stale.
        if job.stale_marked or job.status.get("phase") in TERMINAL_PHASES or job.status.get("results"):
            return False
        updated = job.received or (job.status.get("progress") or {}).get("updateTime")
        age = seconds_since(updated, wall)
        return age is not None and age > self.stale_seconds

    def done(self, write: Write, *, ok: bool, gone: bool = False) -> None:
        """A write finished. ``gone``: the job no longer exists. A failed write is tried again after the
        throttle interval with the newest report then."""
        with self._lock:
            job = self._jobs.get(write.key)
            if job is None:
                return
            job.in_flight = False
            if gone:
                del self._jobs[write.key]
                return
            if ok and write.kind == "progress" and job.sequence == write.sequence:
                job.report = None
                job.status = {**job.status, **{k: v for k, v in write.fields.items() if v is not None}}
            if ok and write.kind == "stale":
                job.stale_marked = True
            if job.report is None and job.status.get("phase") in TERMINAL_PHASES:
                del self._jobs[write.key]

    def stale_jobs(self) -> int:
        with self._lock:
            return sum(1 for job in self._jobs.values() if job.stale_marked)

    def __len__(self) -> int:
        with self._lock:
            return len(self._jobs)


# ---------------------------------------------------------------------------------------- authentication


class Unauthenticated(Exception):
    """401: no token, or the API server does not accept it for this job's audience."""


class Forbidden(Exception):
    """403: a real token, but not of a pod of this job."""


@dataclass(frozen=True)
class Identity:
    namespace: str
    service_account: str
    pod: str
    pod_uid: str


def _token_expiry(token: str) -> float | None:
    """The ``exp`` claim (unix time) of a JWT whose signature the API server has already checked."""
    try:
        payload = token.split(".")[1]
        return float(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["exp"])
    except (IndexError, ValueError, KeyError, TypeError):
        return None


class TokenAuthenticator:
    """Is this bearer token one of a pod of job ``namespace/name``? Blocking (TokenReview, pod read)."""

    def __init__(self, *, review: Callable[[str, str], dict[str, Any]] = kube.review_token,
                 get_pod: Callable[[str, str], dict[str, Any]] = kube.get_pod,
                 cache_seconds: float = AUTH_CACHE_SECONDS, wall: Callable[[], float] = time.time) -> None:
        self._review, self._get_pod, self._cache_seconds, self._wall = review, get_pod, cache_seconds, wall
        self._cache: dict[tuple[str, str, str], tuple[Identity, float]] = {}
        self._lock = threading.Lock()

    def authenticate(self, token: str, namespace: str, name: str) -> Identity:
        digest = hashlib.sha256(token.encode()).hexdigest()
        cache_key = (digest, namespace, name)
        now = self._wall()
        with self._lock:
            cached = self._cache.get(cache_key)
            if cached is not None and cached[1] > now:
                return cached[0]
        identity = self._prove(token, namespace, name)
        expiry = _token_expiry(token)
        until = min(now + self._cache_seconds, expiry if expiry is not None else now + self._cache_seconds)
        with self._lock:
            if len(self._cache) > 10_000:  # expired entries of jobs long gone
                self._cache = {k: v for k, v in self._cache.items() if v[1] > now}
            self._cache[cache_key] = (identity, until)
        return identity

    def _prove(self, token: str, namespace: str, name: str) -> Identity:
        status = self._review(token, audience(namespace, name)).get("status") or {}
        if not status.get("authenticated"):
            raise Unauthenticated(status.get("error") or "the token is not valid for this job's endpoint")
        user = status.get("user") or {}
        parts = (user.get("username") or "").split(":")
        if len(parts) != 4 or parts[:2] != ["system", "serviceaccount"]:
            raise Forbidden(f"{user.get('username')!r} is not a service account")
        extra = user.get("extra") or {}
        pod_name = (extra.get("authentication.kubernetes.io/pod-name") or [None])[0]
        pod_uid = (extra.get("authentication.kubernetes.io/pod-uid") or [None])[0]
        if parts[2] != namespace:
            raise Forbidden(f"service account {parts[2]}/{parts[3]} is not in the job's namespace {namespace}")
        if not pod_name or not pod_uid:
            raise Forbidden("the token is not bound to a pod (use the projected token the operator mounts)")
        try:
            pod = self._get_pod(namespace, pod_name)
        except kube.NotFound:
            raise Forbidden(f"pod {namespace}/{pod_name} does not exist any more") from None
        meta = pod.get("metadata") or {}
        if meta.get("uid") != pod_uid:
            raise Forbidden(f"pod {namespace}/{pod_name} was replaced since the token was issued")
        if (meta.get("labels") or {}).get(api.LABEL_JOB_NAME) != name:
            raise Forbidden(f"pod {namespace}/{pod_name} is not a pod of {api.KIND} {name} (label "
                            f"{api.LABEL_JOB_NAME})")
        return Identity(namespace, parts[3], pod_name, pod_uid)


# ---------------------------------------------------------------------------------------------- serving


def _answer(code: int, reason: str, message: str) -> web.Response:
    """A Kubernetes-style Status, as Trainer's status server answers too."""
    body = {"kind": "Status", "apiVersion": "v1", "status": "Success" if code < 400 else "Failure",
            "message": message, "reason": reason, "code": code}
    return web.json_response(body, status=code)


def _bearer(header: str | None) -> str | None:
    parts = (header or "").split()
    return parts[1] if len(parts) == 2 and parts[0].lower() == "bearer" else None


class ProgressServer:
    """The endpoint (``POST`` :data:`ROUTE`) and the status writer, on the running event loop."""

    def __init__(self, store: ProgressStore, authenticator: TokenAuthenticator, *,
                 write: Callable[[str, str, dict[str, Any]], Any] = kube.merge_job_status, workers: int = 4) -> None:
        self.store, self.authenticator, self._write = store, authenticator, write
        self._workers = workers
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="progress")
        self._reviews = asyncio.Semaphore(workers)
        self._waiting = 0
        self._runner: web.AppRunner | None = None
        self._writer: asyncio.Task[None] | None = None
        self.port: int | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_REPORT_BYTES)
        app.router.add_post(ROUTE, self.receive)
        app.router.add_route("*", "/{anything:.*}", self.elsewhere)
        return app

    async def elsewhere(self, request: web.Request) -> web.Response:
        return _answer(404, "NotFound", f"only POST {ROUTE} is served here")

    async def receive(self, request: web.Request) -> web.Response:
        metrics.PROGRESS_RECEIVED.inc()
        namespace, name = request.match_info["namespace"], request.match_info["name"]
        if request.content_length is not None and request.content_length > MAX_REPORT_BYTES:
            return self._reject(413, "TooLarge", f"a report is at most {MAX_REPORT_BYTES} bytes")
        token = _bearer(request.headers.get("Authorization"))
        if token is None:
            return self._reject(401, "Unauthenticated", "no bearer token (Authorization: Bearer <projected token>)")
        if self._waiting >= MAX_PENDING_REVIEWS:
            return self._reject(503, "Busy", "too many reports waiting for authentication; retry later")
        self._waiting += 1
        try:
            async with self._reviews:
                await asyncio.get_running_loop().run_in_executor(
                    self._pool, self.authenticator.authenticate, token, namespace, name)
        except Unauthenticated as e:
            return self._reject(401, "Unauthenticated", str(e))
        except Forbidden as e:
            return self._reject(403, "Forbidden", str(e))
        except kube.API_FAILURES as e:
            log.warning(f"TokenReview for a progress report of {namespace}/{name} failed: {e}")
            return self._reject(503, "Unavailable", "cannot check the token now (TokenReview failed); retry later")
        finally:
            self._waiting -= 1
        try:
            report = parse_report(json.loads(await request.read()))
        except web.HTTPRequestEntityTooLarge:
            return self._reject(413, "TooLarge", f"a report is at most {MAX_REPORT_BYTES} bytes")
        except (ValueError, ReportError) as e:  # JSONDecodeError is a ValueError
            return self._reject(422, "Invalid", f"not a progress report: {e}")
        self.store.accept((namespace, name), report)
        return _answer(202, "Accepted", f"progress of {api.KIND} {namespace}/{name} recorded")

    def _reject(self, code: int, reason: str, message: str) -> web.Response:
        metrics.PROGRESS_REJECTED.labels(reason=reason).inc()
        return _answer(code, reason, message)

    # ---- writing
    def write_due(self) -> list[concurrent.futures.Future[None]]:
        """Start the writes that are due now (on the pool; returns their futures)."""
        return [self._pool.submit(self._carry_out, write) for write in self.store.due(limit=self._workers)]

    def _carry_out(self, write: Write) -> None:
        namespace, name = write.key
        try:
            self._write(namespace, name, write.fields)
        except kube.NotFound:
            self.store.done(write, ok=False, gone=True)
            return
        except kube.API_FAILURES as e:
            gone = getattr(e, "status", None) == 404
            metrics.PROGRESS_WRITE_ERRORS.labels(reason=kube.error_reason(e)).inc()
            if not gone:
                log.warning(f"Could not write the progress of {api.KIND} {namespace}/{name}: {e}")
            self.store.done(write, ok=False, gone=gone)
            return
        metrics.PROGRESS_WRITES.labels(kind=write.kind).inc()
        if write.kind == "stale":
            log.info(f"Progress of {api.KIND} {namespace}/{name} is stale: no report for "
                     f"{self.store.stale_seconds:g} s")
        self.store.done(write, ok=True)

    async def _write_forever(self, period: float) -> None:
        while True:
            await asyncio.sleep(period)
            try:
                self.write_due()
            except Exception:  # noqa: BLE001 - the writer must outlive any one bad round
                log.exception("progress writer round failed")

    # ---- life cycle
    async def start(self, port: int, address: str, *, period: float = 1.0, ssl_context: Any = None) -> None:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, address, port, ssl_context=ssl_context)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1] if site._server else port  # type: ignore[union-attr]
        self._writer = asyncio.create_task(self._write_forever(period), name="kubefusion-progress-writer")

    async def stop(self) -> None:
        if self._writer is not None:
            self._writer.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
        self._pool.shutdown(wait=False, cancel_futures=True)
