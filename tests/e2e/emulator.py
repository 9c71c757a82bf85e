"""A Kubernetes API emulator faithful enough for kopf, kubectl and the official Python client.

Built on kmock (by kopf's author): kmock's HTTP server, request parsing (group/version/plural/namespace/
name/subresource out of the URL; patched for the ``namespaces`` resource itself), error rendering as
``Status`` objects, its reaction DSL (for injected failures) and its object store (``emulator.objects[...]``
with the history of every object, for assertions) are used as they are; discovery (``/api``, ``/apis``,
``/apis/<group>/<version>``) is answered from this class's registry, because kmock's names the core group
version ``/v1`` (kubectl then finds no built-in resource). kmock's own
``KubernetesEmulator`` changes its store naively (a dict merge in ``_handle`` before any reaction runs),
so this subclass skips that step and serves every object request itself, as a *fallback* reaction: a
test can still put a kmock reaction in front of it (``emulator['post', resource] << 500``) to inject an
API failure, and then nothing is stored, as on a real server. (kmock finds a reaction by re-filtering all
requests served so far; while a test has set none, object requests skip that O(n) search.)

What a real API server does and kmock as shipped does not, and which this class adds:

- ``uid``, ``resourceVersion`` (one cluster-wide counter), ``creationTimestamp``, ``generation`` (custom
  resources and CRDs: bumped on any change outside ``metadata`` and ``status``); ``generateName``;
  ``201 Created`` on create (the Python client returns ``None`` on a 200); names validated (422).
- The status subresource: the main endpoint ignores ``status``, ``/status`` changes only ``status``.
- Merge patch (RFC 7386), JSON patch (RFC 6902, a failed ``test`` is 422), strategic merge patch for
  built-in kinds (treated as a merge patch: lists are replaced, not merged by key) and 415 for it on
  custom resources, as a real server answers; PUT (replace) needs ``metadata.resourceVersion`` (422)
  and a stale one is 409; a patch carrying a stale ``metadata.resourceVersion`` is 409; no-op writes
  change nothing and send no watch event.
- 409 AlreadyExists on create; 404 NotFound for objects, for unknown resources and namespaces.
- Lists carry ``kind: <Kind>List``, ``apiVersion`` and the current ``resourceVersion``; label selectors
  (``=``, ``==``, ``!=``, ``in``, ``notin``, ``key``, ``!key``) and field selectors on
  ``metadata.name``/``metadata.namespace``; ``Accept: ...;as=Table`` renders the CRD's
  ``additionalPrinterColumns`` (``kubectl get`` shows them).
- Watches: without ``resourceVersion`` (or with ``0``) the existing objects come as ``ADDED`` first;
  with one, only events newer than it; ``timeoutSeconds`` ends the stream; selectors apply, and an object
  that stops (starts) matching is sent as ``DELETED`` (``ADDED``).
- Deletion: finalizers hold an object with ``deletionTimestamp`` until they are removed.
- A POSTed CustomResourceDefinition registers its resource (kind, plural, short names, scope, status
  subresource, printer columns) in discovery and becomes ``Established``; deleting it removes the
  resource and its objects. kopf sees the change through its CRD watch and rescans.

Not emulated: protobuf request bodies (415: kubectl writes built-in kinds as protobuf, so create those with the
Python client), server-side apply (415), admission/OpenAPI validation and defaulting, field managers,
``limit``/``continue`` paging (everything comes in one page), watch bookmarks, authentication, RBAC, garbage
collection. The emulator is kept for what a real control plane cannot produce on demand (injected failures,
races); tests/cluster runs everything else against real Kubernetes components, RBAC and the garbage collector
included.

:class:`EmulatorThread` runs the emulator on 127.0.0.1 on a free port in a background thread with its own
event loop, so that tests can drive it with the synchronous Python client and subprocesses.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import json
import re
import secrets
import threading
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

import attrs
import jsonpatch
import jsonpointer
from kmock import KubernetesEmulator, KubernetesError, Request, ResourceInfo, Server, resource
from kmock._internal import apps, dicts, parsing, rendering

_kmock_parse_path = parsing.parse_path


def _parse_path(path: str) -> parsing.ParsedPath:
    """kmock reads ``/api/v1/namespaces[/<name>]`` as a namespace prefix with nothing after it (and fails):
    here it is the cluster-scoped ``namespaces`` resource, as in the real API."""
    parts = path.strip('/').split('/')
    if parts[:3] == ['api', 'v1', 'namespaces'] and (len(parts) <= 4 or len(parts) == 5 and parts[4] == 'status'):
        return parsing.ParsedPath('', 'v1', 'namespaces', None, *(parts[3:5] + [None, None])[:2])
    return _kmock_parse_path(path)


parsing.parse_path = _parse_path  # kmock's request parser looks the function up on its module at each request

CRDS = resource('apiextensions.k8s.io', 'v1', 'customresourcedefinitions')
NAMESPACES = resource('', 'v1', 'namespaces')

_NAME_RE = re.compile(r'[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?')
_SELECTOR_SET_RE = re.compile(r'\s*(!?)([A-Za-z0-9_./-]+)\s*(?:(in|notin)\s*\(([^)]*)\)|(==|!=|=)\s*(\S*))?\s*$')


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%dT%H:%M:%SZ')


def api_error(status: int, reason: str, message: str, **details: Any) -> KubernetesError:
    """A ``Status`` failure as a real API server words it (``reason`` is a machine-readable StatusReason)."""
    return KubernetesError(status=status, reason=reason, message=message, details=details or {})


@dataclass
class Kind:
    """What the emulator knows about one resource (what a CRD or the built-in registry declares)."""

    resource: resource
    kind: str
    namespaced: bool
    singular: str = ''
    short_names: tuple[str, ...] = ()
    status_subresource: bool = False
    generation: bool = False
    """Whether ``metadata.generation`` is kept (custom resources and CRDs; not ConfigMaps or Events)."""
    custom: bool = False
    """Custom resources refuse strategic merge patches (415), as a real server does."""
    printer_columns: list[dict[str, Any]] = field(default_factory=list)

    @property
    def api_version(self) -> str:
        return f'{self.resource.group}/{self.resource.version}' if self.resource.group else self.resource.version

    def describe(self, kind: str) -> str:
        plural = self.resource.plural
        return f'{plural}.{self.resource.group}' if self.resource.group else str(plural)


BUILTIN_KINDS = (
    Kind(NAMESPACES, 'Namespace', namespaced=False),
    Kind(resource('', 'v1', 'configmaps'), 'ConfigMap', namespaced=True, short_names=('cm',)),
    Kind(resource('', 'v1', 'events'), 'Event', namespaced=True, short_names=('ev',)),
    Kind(resource('events.k8s.io', 'v1', 'events'), 'Event', namespaced=True, short_names=('ev',)),
    Kind(CRDS, 'CustomResourceDefinition', namespaced=False, short_names=('crd', 'crds'),
         status_subresource=True, generation=True),
)


# ------------------------------------------------------------------------------------------ selectors


def parse_label_selector(text: str) -> list[tuple[str, str, set[str]]]:
    """``a=b,c!=d,e in (f,g),!h`` -> [(key, operator, values)]; a malformed selector is a 400."""
    requirements: list[tuple[str, str, set[str]]] = []
    for part in re.split(r',(?![^(]*\))', text.strip()) if text.strip() else []:
        match = _SELECTOR_SET_RE.fullmatch(part)
        if match is None:
            raise api_error(400, 'BadRequest', f'unable to parse requirement: {part!r}')
        negated, key, set_op, set_values, eq_op, eq_value = match.groups()
        if negated and (set_op or eq_op):
            raise api_error(400, 'BadRequest', f'unable to parse requirement: {part!r}')
        if set_op:
            requirements.append((key, set_op, {v.strip() for v in set_values.split(',') if v.strip()}))
        elif eq_op:
            requirements.append((key, '!=' if eq_op == '!=' else '=', {eq_value}))
        else:
            requirements.append((key, '!' if negated else 'exists', set()))
    return requirements


def labels_match(labels: dict[str, str], requirements: list[tuple[str, str, set[str]]]) -> bool:
    for key, op, values in requirements:
        present = key in labels
        if op == 'exists' and not present or op == '!' and present:
            return False
        if op in ('=', 'in') and (not present or labels[key] not in values):
            return False
        if op in ('!=', 'notin') and present and labels[key] in values:
            return False
    return True


def parse_field_selector(text: str) -> list[tuple[str, bool, str]]:
    requirements: list[tuple[str, bool, str]] = []
    for part in [p for p in text.split(',') if p.strip()]:
        match = re.fullmatch(r'\s*([A-Za-z.]+)\s*(==|=|!=)\s*(\S*)\s*', part)
        if match is None or match.group(1) not in ('metadata.name', 'metadata.namespace'):
            raise api_error(400, 'BadRequest', f'field label not supported: {part.strip()!r}')
        requirements.append((match.group(1), match.group(2) != '!=', match.group(3)))
    return requirements


def fields_match(obj: dict[str, Any], requirements: list[tuple[str, bool, str]]) -> bool:
    meta = obj.get('metadata', {})
    for path, equal, value in requirements:
        actual = meta.get(path.split('.', 1)[1]) or ''
        if (actual == value) != equal:
            return False
    return True


# ----------------------------------------------------------------------------------- printer columns


def jsonpath_values(obj: Any, path: str) -> list[Any]:
    """The subset of kubectl's JSONPath that printer columns use: ``.a.b``, ``[0]``, ``[?(@.k=="v")]``."""
    values = [obj]
    for token in re.findall(r'\.([A-Za-z0-9_-]+)|\[(\d+)\]|\[\?\(@\.([A-Za-z0-9_]+)\s*==\s*["\']([^"\']*)["\']\)\]', path):
        key, index, filter_key, filter_value = token
        nxt: list[Any] = []
        for value in values:
            if key and isinstance(value, dict) and key in value:
                nxt.append(value[key])
            elif index and isinstance(value, list) and int(index) < len(value):
                nxt.append(value[int(index)])
            elif filter_key and isinstance(value, list):
                nxt.extend(v for v in value if isinstance(v, dict) and str(v.get(filter_key)) == filter_value)
        values = nxt
    return values


# ------------------------------------------------------------------------------------------ emulator


@attrs.define(kw_only=True)
class FaithfulKubernetesEmulator(KubernetesEmulator):
    """kmock's emulator with the API semantics kopf, kubectl and the Python client rely on (see module doc)."""

    kinds: dict[resource, Kind] = attrs.field(factory=dict, init=False)
    resource_version: int = attrs.field(default=0, init=False)
    events: list[dict[str, Any]] = attrs.field(factory=list, init=False)
    """Every change as a watch event, with ``rv``, ``resource`` and the previous state (``old``)."""
    _watchers: set[asyncio.Queue[dict[str, Any]]] = attrs.field(factory=set, init=False)
    _own_reactions: int = attrs.field(default=0, init=False)

    def __attrs_post_init__(self) -> None:
        # kmock's scaffold serves discovery and unknown endpoints; its emulator's naive CRUD fallbacks
        # are replaced by one fallback that serves every object request (below).
        super(KubernetesEmulator, self).__attrs_post_init__()
        self.fallback[self._is_object_request] << self._serve_object_request
        self._own_reactions = len(self._payloads)
        for kind in BUILTIN_KINDS:
            self.register(kind)
        for namespace in ('default', 'kube-system'):
            self._store(NAMESPACES, None, {'apiVersion': 'v1', 'kind': 'Namespace',
                                           'metadata': {'name': namespace}})

    async def _handle(self, request: rendering.Request) -> Any:
        # kmock matches a request against a reaction by re-filtering every request served so far (O(n) per
        # request, O(n^2) per test): with no reaction added by the test, object requests skip that search.
        if len(self._payloads) == self._own_reactions and self._is_object_request(request):
            return await (await self._serve_object_request(request))(request)
        # Not KubernetesEmulator._handle: it writes to the store before any reaction is chosen.
        return await apps.RawHandler._handle(self, request)

    @staticmethod
    def _is_object_request(request: rendering.Request) -> bool:
        return request.resource is not None and request.resource.plural is not None

    # ---------------------------------------------------------------------------------- registry

    def register(self, kind: Kind) -> None:
        self.kinds[kind.resource] = kind
        self.resources[kind.resource] = ResourceInfo(
            kind=kind.kind, namespaced=kind.namespaced, singular=kind.singular or kind.kind.lower(),
            shortnames=set(kind.short_names), subresources={'status'} if kind.status_subresource else set(),
            verbs={'create', 'delete', 'get', 'list', 'patch', 'update', 'watch'})

    def unregister(self, res: resource) -> None:
        self.kinds.pop(res, None)
        if res in self.resources:
            del self.resources[res]

    def _kinds_from_crd(self, crd: dict[str, Any]) -> list[Kind]:
        spec = crd.get('spec', {})
        names = spec.get('names', {})
        kinds = []
        for version in spec.get('versions', []):
            if not version.get('served', True):
                continue
            kinds.append(Kind(
                resource(spec.get('group', ''), version['name'], names.get('plural')),
                kind=names.get('kind', ''), namespaced=spec.get('scope', 'Namespaced') == 'Namespaced',
                singular=names.get('singular', ''), short_names=tuple(names.get('shortNames', [])),
                status_subresource='status' in (version.get('subresources') or {}),
                generation=True, custom=True, printer_columns=list(version.get('additionalPrinterColumns', []))))
        return kinds

    # --------------------------------------------------------------------------------- the store

    def _next_rv(self) -> str:
        self.resource_version += 1
        return str(self.resource_version)

    def _get(self, res: resource, namespace: str | None, name: str) -> dict[str, Any] | None:
        key = (res, namespace, name)
        if key in self.objects and not self.objects[key].deleted:
            return self.objects[key].raw
        return None

    def _live(self, res: resource | None = None) -> Iterable[tuple[resource, str | None, dict[str, Any]]]:
        for (r, namespace, _), obj in list(self.objects.items()):
            if (res is None or r == res) and not obj.deleted:
                yield r, namespace, obj.raw

    def _emit(self, res: resource, type_: str, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        event = {'rv': int(obj['metadata']['resourceVersion']), 'resource': res, 'type': type_,
                 'object': obj, 'old': old}
        self.events.append(event)
        for queue in self._watchers:
            queue.put_nowait(event)

    def _store(self, res: resource, namespace: str | None, obj: dict[str, Any]) -> dict[str, Any]:
        """Stamp a new object, store it and announce it (synchronous: atomic within the event loop)."""
        kind = self.kinds[res]
        meta = obj.setdefault('metadata', {})
        meta.update(uid=str(uuid.uuid4()), resourceVersion=self._next_rv(), creationTimestamp=_now())
        if namespace is not None:
            meta['namespace'] = namespace
        for volatile in ('deletionTimestamp', 'deletionGracePeriodSeconds', 'generation', 'managedFields'):
            meta.pop(volatile, None)
        if kind.generation:
            meta['generation'] = 1
        obj['apiVersion'], obj['kind'] = kind.api_version, kind.kind
        key = (res, namespace, meta['name'])
        if key in self.objects:
            self.objects[key].create(obj)
        else:
            self.objects[key] = obj
        stored = self.objects[key].raw
        self._emit(res, 'ADDED', stored, None)
        if res == CRDS:
            self._establish(stored)
        return stored

    def _replace(self, res: resource, namespace: str | None, old: dict[str, Any], new: dict[str, Any],
                 *, subresource: str | None) -> dict[str, Any]:
        """Write a new state of an existing object as the API server would accept it."""
        kind = self.kinds[res]
        new = copy.deepcopy(new)
        if kind.status_subresource:
            if subresource == 'status':
                # Only the status changes through /status; the rest of the request is ignored.
                new = dict(copy.deepcopy(old), status=new['status']) if 'status' in new else \
                    {k: v for k, v in copy.deepcopy(old).items() if k != 'status'}
            elif 'status' in old:
                new['status'] = copy.deepcopy(old['status'])
            else:
                new.pop('status', None)
        meta = new.setdefault('metadata', {})
        old_meta = old['metadata']
        for fixed in ('name', 'namespace', 'uid', 'creationTimestamp', 'deletionTimestamp',
                      'deletionGracePeriodSeconds', 'generation', 'resourceVersion'):
            if fixed in old_meta:
                meta[fixed] = old_meta[fixed]
            else:
                meta.pop(fixed, None)
        new['apiVersion'], new['kind'] = kind.api_version, kind.kind
        if new == old:
            return old  # a no-op write changes nothing and is not announced
        if kind.generation and _without(new) != _without(old):
            meta['generation'] = old_meta.get('generation', 1) + 1
        meta['resourceVersion'] = self._next_rv()
        key = (res, namespace, meta['name'])
        self.objects[key].create(new)
        stored = self.objects[key].raw
        if meta.get('deletionTimestamp') and not meta.get('finalizers'):
            self._remove(res, namespace, stored)
        else:
            self._emit(res, 'MODIFIED', stored, old)
        return stored

    def _remove(self, res: resource, namespace: str | None, obj: dict[str, Any]) -> None:
        final = copy.deepcopy(obj)
        final['metadata']['resourceVersion'] = self._next_rv()
        key = (res, namespace, obj['metadata']['name'])
        self.objects[key].create(final)
        self.objects[key].delete()
        self._emit(res, 'DELETED', final, obj)
        if res == CRDS:
            for kind in self._kinds_from_crd(obj):
                for r, ns, child in list(self._live(kind.resource)):
                    self._remove(r, ns, child)
                self.unregister(kind.resource)

    def _delete(self, res: resource, namespace: str | None, obj: dict[str, Any]) -> dict[str, Any]:
        meta = obj['metadata']
        if meta.get('finalizers'):
            if meta.get('deletionTimestamp'):
                return obj
            marked = copy.deepcopy(obj)
            marked['metadata'].update(deletionTimestamp=_now(), deletionGracePeriodSeconds=0,
                                      resourceVersion=self._next_rv())
            if self.kinds[res].generation:
                marked['metadata']['generation'] = meta.get('generation', 1) + 1
            key = (res, namespace, meta['name'])
            self.objects[key].create(marked)
            self._emit(res, 'MODIFIED', self.objects[key].raw, obj)
            return self.objects[key].raw
        self._remove(res, namespace, obj)
        return obj

    def _establish(self, crd: dict[str, Any]) -> None:
        for kind in self._kinds_from_crd(crd):
            self.register(kind)
        names = crd.get('spec', {}).get('names', {})
        status = {'acceptedNames': names, 'storedVersions': [v['name'] for v in crd['spec'].get('versions', [])
                                                             if v.get('storage')],
                  'conditions': [{'type': t, 'status': 'True', 'reason': r, 'lastTransitionTime': _now(),
                                  'message': m} for t, r, m in
                                 (('NamesAccepted', 'NoConflicts', 'no conflicts found'),
                                  ('Established', 'InitialNamesAccepted', 'the initial names have been accepted'))]}
        key = (CRDS, None, crd['metadata']['name'])
        updated = dict(copy.deepcopy(crd), status=status)
        updated['metadata']['resourceVersion'] = self._next_rv()
        self.objects[key].create(updated)
        self._emit(CRDS, 'MODIFIED', self.objects[key].raw, crd)

    # ---------------------------------------------------------------------------------- discovery
    # kmock's scaffold answers discovery too, but names the core group version "/v1" (kubectl then finds no
    # built-in resource) and copies short names onto subresources (kubectl warns of ambiguous short names).

    def _group_versions(self) -> dict[str, list[str]]:
        groups: dict[str, list[str]] = {}
        for res in self.kinds:
            if res.group and res.version not in groups.setdefault(res.group, []):
                groups[res.group].append(res.version)
        return groups

    async def _serve_api(self, request: Request) -> dict[str, Any]:
        return {'kind': 'APIVersions', 'versions': ['v1'],
                'serverAddressByClientCIDRs': [{'clientCIDR': '0.0.0.0/0', 'serverAddress': '127.0.0.1'}]}

    def _group_document(self, group: str, versions: list[str]) -> dict[str, Any]:
        entries = [{'groupVersion': f'{group}/{v}', 'version': v} for v in versions]
        return {'name': group, 'versions': entries, 'preferredVersion': entries[0]}

    async def _serve_apis(self, request: Request) -> dict[str, Any]:
        return {'apiVersion': 'v1', 'kind': 'APIGroupList',
                'groups': [self._group_document(g, vs) for g, vs in sorted(self._group_versions().items())]}

    async def _serve_group(self, request: Request) -> dict[str, Any]:
        assert request.resource is not None
        versions = self._group_versions().get(request.resource.group or '')
        if not versions:
            raise api_error(404, 'NotFound', 'the server could not find the requested resource')
        return {'apiVersion': 'v1', 'kind': 'APIGroup', **self._group_document(request.resource.group or '', versions)}

    async def _serve_version(self, request: Request) -> dict[str, Any]:
        assert request.resource is not None
        group, version = request.resource.group or '', request.resource.version
        kinds = [k for res, k in self.kinds.items() if res.group == group and res.version == version]
        if not kinds:
            raise api_error(404, 'NotFound', 'the server could not find the requested resource')
        verbs = ['create', 'delete', 'get', 'list', 'patch', 'update', 'watch']
        resources = []
        for kind in kinds:
            resources.append({'name': kind.resource.plural, 'singularName': kind.singular or kind.kind.lower(),
                              'namespaced': kind.namespaced, 'kind': kind.kind, 'verbs': verbs,
                              'shortNames': list(kind.short_names)})
            if kind.status_subresource:
                resources.append({'name': f'{kind.resource.plural}/status', 'singularName': '',
                                  'namespaced': kind.namespaced, 'kind': kind.kind, 'verbs': ['get', 'patch', 'update']})
        return {'apiVersion': 'v1', 'kind': 'APIResourceList', 'groupVersion': f'{group}/{version}'.lstrip('/'),
                'resources': resources}

    # ------------------------------------------------------------------------------------ serving

    async def _serve_object_request(self, request: Request) -> rendering.Response:
        # Always an explicit status: kmock keeps the status of the last Response a reaction returned.
        result = await self._dispatch(request)
        return result if isinstance(result, rendering.Response) else rendering.Response(status=200, payload=result)

    async def _dispatch(self, request: Request) -> Any:
        res = request.resource
        assert res is not None
        kind = self.kinds.get(resource(res.group, res.version, res.plural))
        if kind is None:
            raise api_error(404, 'NotFound', 'the server could not find the requested resource')
        res = kind.resource
        if request.subresource not in (None, 'status') or request.subresource == 'status' and (
                not kind.status_subresource or request.name is None):
            raise api_error(404, 'NotFound', 'the server could not find the requested resource')
        namespace = request.namespace if kind.namespaced else None
        if kind.namespaced and request.name is not None and namespace is None:
            raise api_error(404, 'NotFound', 'the server could not find the requested resource')
        method = request.method.upper()
        if 'protobuf' in _header(request, 'Content-Type'):
            raise api_error(415, 'UnsupportedMediaType', 'the emulator reads JSON request bodies only, not protobuf')
        if method == 'GET' and request.params.get('watch') in ('true', '1'):
            return self._watch(kind, namespace, request)
        if method == 'GET' and request.name is None:
            return self._list(kind, namespace, request)
        if method == 'POST' and request.name is None:
            return rendering.Response(status=201, payload=self._create(kind, namespace, request))
        if request.name is None:
            raise api_error(405, 'MethodNotAllowed', f'the server does not allow this method on the requested resource')
        obj = self._get(res, namespace, request.name)
        if obj is None:
            raise api_error(404, 'NotFound', f'{kind.describe(kind.kind)} "{request.name}" not found',
                            name=request.name, group=res.group, kind=res.plural)
        if method == 'GET':
            return obj
        if method == 'PUT':
            return self._update(kind, namespace, obj, request)
        if method == 'PATCH':
            return self._patch(kind, namespace, obj, request)
        if method == 'DELETE':
            body = request.data if isinstance(request.data, dict) else {}
            expected = (body.get('preconditions') or {}).get('resourceVersion')
            if expected and expected != obj['metadata']['resourceVersion']:
                raise self._conflict(kind, request.name)
            return self._delete(res, namespace, obj)
        raise api_error(405, 'MethodNotAllowed', 'the server does not allow this method on the requested resource')

    def _conflict(self, kind: Kind, name: str) -> KubernetesError:
        return api_error(409, 'Conflict', f'Operation cannot be fulfilled on {kind.describe(kind.kind)} "{name}": '
                         'the object has been modified; please apply your changes to the latest version and try again',
                         name=name, group=kind.resource.group, kind=kind.resource.plural)

    def _check_namespace(self, namespace: str | None) -> None:
        if namespace is not None and self._get(NAMESPACES, None, namespace) is None:
            raise api_error(404, 'NotFound', f'namespaces "{namespace}" not found', name=namespace, kind='namespaces')

    def _create(self, kind: Kind, namespace: str | None, request: Request) -> dict[str, Any]:
        body = request.data
        if not isinstance(body, dict):
            raise api_error(400, 'BadRequest', 'the request body must be a JSON object')
        obj = copy.deepcopy(body)
        meta = obj.setdefault('metadata', {})
        if obj.get('kind') not in (None, kind.kind) or obj.get('apiVersion') not in (None, kind.api_version):
            raise api_error(400, 'BadRequest', f'the API version in the data ({obj.get("apiVersion")}) does not '
                            f'match the expected API version ({kind.api_version})')
        if kind.namespaced and meta.get('namespace') not in (None, namespace):
            raise api_error(400, 'BadRequest', 'the namespace of the provided object does not match the '
                            'namespace sent on the request')
        if not meta.get('name') and meta.get('generateName'):
            meta['name'] = meta['generateName'] + secrets.token_hex(3)[:5]
        name = meta.get('name') or ''
        if not name:
            raise api_error(422, 'Invalid', f'{kind.kind} "" is invalid: metadata.name: Required value: name or '
                            'generateName is required', kind=kind.kind)
        if not _NAME_RE.fullmatch(name) or len(name) > 253:
            raise api_error(422, 'Invalid', f'{kind.kind} "{name}" is invalid: metadata.name: Invalid value: '
                            f'"{name}": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric '
                            "characters, '-' or '.'", name=name, kind=kind.kind)
        self._check_namespace(namespace)
        if self._get(kind.resource, namespace, name) is not None:
            raise api_error(409, 'AlreadyExists', f'{kind.describe(kind.kind)} "{name}" already exists',
                            name=name, group=kind.resource.group, kind=kind.resource.plural)
        if kind.status_subresource:
            obj.pop('status', None)  # status comes only through /status
        return self._store(kind.resource, namespace, obj)

    def _update(self, kind: Kind, namespace: str | None, obj: dict[str, Any], request: Request) -> dict[str, Any]:
        body = request.data
        if not isinstance(body, dict):
            raise api_error(400, 'BadRequest', 'the request body must be a JSON object')
        meta = body.get('metadata') or {}
        if meta.get('name') not in (None, request.name):
            raise api_error(400, 'BadRequest', 'the name of the object does not match the name on the URL')
        if not meta.get('resourceVersion'):
            raise api_error(422, 'Invalid', f'{kind.kind} "{request.name}" is invalid: metadata.resourceVersion: '
                            'Invalid value: 0: must be specified for an update', name=request.name, kind=kind.kind)
        if meta['resourceVersion'] != obj['metadata']['resourceVersion']:
            raise self._conflict(kind, request.name or '')
        return self._replace(kind.resource, namespace, obj, body, subresource=request.subresource)

    def _patch(self, kind: Kind, namespace: str | None, obj: dict[str, Any], request: Request) -> dict[str, Any]:
        content_type = _header(request, 'Content-Type').split(';')[0].strip()
        patch = request.data
        if content_type == 'application/json-patch+json':
            if not isinstance(patch, list):
                raise api_error(400, 'BadRequest', 'a JSON patch must be a list of operations')
            try:
                new = jsonpatch.apply_patch(obj, patch, in_place=False)
            except jsonpatch.JsonPatchTestFailed as e:
                raise api_error(422, 'Invalid', f'the server rejected our request due to an error in our request: {e}')
            except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as e:
                raise api_error(422, 'Invalid', f'the server rejected our request due to an error in our request: {e}')
        elif content_type in ('application/merge-patch+json', 'application/strategic-merge-patch+json'):
            if content_type.startswith('application/strategic') and kind.custom:
                raise api_error(415, 'UnsupportedMediaType', f'the body of the request was in an unknown format - '
                                f'accepted media types include: application/json-patch+json, '
                                f'application/merge-patch+json, application/apply-patch+yaml')
            if not isinstance(patch, dict):
                raise api_error(400, 'BadRequest', 'a merge patch must be a JSON object')
            expected = (patch.get('metadata') or {}).get('resourceVersion')
            if expected and expected != obj['metadata']['resourceVersion']:
                raise self._conflict(kind, request.name or '')
            new = dicts.merge_patch_dict(obj, patch)
        else:
            raise api_error(415, 'UnsupportedMediaType', f'the body of the request was in an unknown format - '
                            f'accepted media types include: application/json-patch+json, '
                            f'application/merge-patch+json (got {content_type!r})')
        if not isinstance(new, dict) or not isinstance(new.get('metadata'), dict):
            raise api_error(422, 'Invalid', 'the patch removed the object metadata')
        return self._replace(kind.resource, namespace, obj, new, subresource=request.subresource)

    def _selected(self, request: Request) -> Any:
        labels = parse_label_selector(request.params.get('labelSelector', ''))
        fields_ = parse_field_selector(request.params.get('fieldSelector', ''))
        return lambda obj: labels_match(obj['metadata'].get('labels') or {}, labels) and fields_match(obj, fields_)

    def _list(self, kind: Kind, namespace: str | None, request: Request) -> dict[str, Any]:
        self._check_namespace(namespace)
        selected = self._selected(request)
        items = sorted((obj for _, ns, obj in self._live(kind.resource)
                        if (namespace is None or ns == namespace) and selected(obj)),
                       key=lambda o: (o['metadata'].get('namespace') or '', o['metadata']['name']))
        if 'as=Table' in _header(request, 'Accept') and kind.custom:
            return self._table(kind, items)
        return {'apiVersion': kind.api_version, 'kind': f'{kind.kind}List',
                'metadata': {'resourceVersion': str(self.resource_version)}, 'items': items}

    def _table(self, kind: Kind, items: list[dict[str, Any]]) -> dict[str, Any]:
        columns = kind.printer_columns or [{'name': 'Age', 'type': 'date', 'jsonPath': '.metadata.creationTimestamp'}]
        definitions = [{'name': 'Name', 'type': 'string', 'format': 'name', 'description': 'Name', 'priority': 0}]
        definitions += [{'name': c['name'], 'type': c.get('type', 'string'), 'format': c.get('format', ''),
                         'description': c.get('description', ''), 'priority': c.get('priority', 0)} for c in columns]
        rows = []
        for obj in items:
            cells: list[Any] = [obj['metadata']['name']]
            for column in columns:
                found = jsonpath_values(obj, column['jsonPath'])
                value = found[0] if found else None
                if column.get('type') == 'date' and isinstance(value, str):
                    value = _human_age(value)  # as the API server's CRD table convertor does
                cells.append(value)
            rows.append({'cells': cells, 'object': {'kind': 'PartialObjectMetadata', 'apiVersion': 'meta.k8s.io/v1',
                                                    'metadata': obj['metadata']}})
        return {'kind': 'Table', 'apiVersion': 'meta.k8s.io/v1',
                'metadata': {'resourceVersion': str(self.resource_version)},
                'columnDefinitions': definitions, 'rows': rows}

    async def _watch(self, kind: Kind, namespace: str | None, request: Request) -> AsyncIterator[Any]:
        selected = self._selected(request)
        since = request.params.get('resourceVersion') or '0'
        if not since.isdigit():
            raise api_error(400, 'BadRequest', f'invalid resource version: {since!r}')
        timeout = float(request.params['timeoutSeconds']) if request.params.get('timeoutSeconds') else None

        def relevant(event: dict[str, Any]) -> dict[str, Any] | None:
            obj = event['object']
            if event['resource'] != kind.resource:
                return None
            if namespace is not None and obj['metadata'].get('namespace') != namespace:
                return None
            now_in = event['type'] != 'DELETED' and selected(obj)
            was_in = event['old'] is not None and selected(event['old'])
            if now_in:
                return {'type': 'MODIFIED' if was_in and event['type'] != 'ADDED' else 'ADDED', 'object': obj}
            if was_in or (event['type'] == 'DELETED' and selected(obj)):
                return {'type': 'DELETED', 'object': obj}
            return None

        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        # Snapshot and subscription happen without an await between them: no event is missed or doubled.
        if since == '0':
            backlog = [{'type': 'ADDED', 'object': obj} for _, ns, obj in self._live(kind.resource)
                       if (namespace is None or ns == namespace) and selected(obj)]
        else:
            backlog = [e for e in (relevant(ev) for ev in self.events if ev['rv'] > int(since)) if e]
        self._watchers.add(queue)

        async def stream() -> AsyncIterator[Any]:
            try:
                yield b''  # send the headers now: a watch may stay silent for long
                for event in backlog:
                    yield event
                async with asyncio.timeout(timeout):
                    while True:
                        event = relevant(await queue.get())
                        if event:
                            yield event
            except TimeoutError:
                return
            finally:
                self._watchers.discard(queue)

        return stream()


def _header(request: Request, name: str) -> str:
    """A request header, whatever the case the client spelled it in."""
    return next((value for key, value in request.headers.items() if key.lower() == name.lower()), '')


def _human_age(timestamp: str) -> str:
    """``5s``, ``3m``, ``2h``, ``4d``: how kubectl shows ages."""
    try:
        then = datetime.datetime.strptime(timestamp, '%Y-%m-%dT%H:%M:%SZ').replace(tzinfo=datetime.UTC)
    except ValueError:
        return timestamp
    seconds = max(int((datetime.datetime.now(datetime.UTC) - then).total_seconds()), 0)
    for unit, size in (('d', 86400), ('h', 3600), ('m', 60)):
        if seconds >= 2 * size:
            return f'{seconds // size}{unit}'
    return f'{seconds}s'


def _without(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k not in ('metadata', 'status')}


# ------------------------------------------------------------------------------------ thread runner


class EmulatorThread:
    """Runs the emulator on 127.0.0.1:<free port> in a thread with its own event loop.

    Tests call the API with blocking clients and subprocesses; the emulator keeps serving meanwhile.
    ``call(fn)`` runs ``fn(emulator)`` inside the emulator's loop (for direct, race-free store access).
    """

    def __init__(self) -> None:
        self.emulator: FaithfulKubernetesEmulator | None = None
        self.url = ''
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name='k8s-emulator', daemon=True)

    def __enter__(self) -> EmulatorThread:
        self._thread.start()
        self._ready.wait(timeout=30)
        if self._error is not None or not self.url:
            raise RuntimeError(f'the Kubernetes API emulator did not start: {self._error!r}')
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=30)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException as e:  # surfaced by __enter__
            self._error = e
            self._ready.set()
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        async with FaithfulKubernetesEmulator() as emulator, Server(emulator, host='127.0.0.1') as server:
            self.emulator = emulator
            self.url = f'http://127.0.0.1:{server.port}'
            self._ready.set()
            await self._stop.wait()
            # End open watch streams so that the server shuts down without waiting for clients.
            for queue in list(emulator._watchers):
                emulator._watchers.discard(queue)

    def call(self, fn: Any) -> Any:
        """Run ``fn(emulator)`` in the emulator's loop and return its result."""
        async def run() -> Any:
            return fn(self.emulator)
        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout=30)

    def write_kubeconfig(self, path: Any, namespace: str = 'default', token: str = 'emulator') -> Any:
        """A kubeconfig for kubectl, kopf and the Python client, pointing at this emulator."""
        path.write_text(json.dumps({
            'apiVersion': 'v1', 'kind': 'Config', 'current-context': 'emulator',
            'clusters': [{'name': 'emulator', 'cluster': {'server': self.url}}],
            'users': [{'name': 'tester', 'user': {'token': token}}],
            'contexts': [{'name': 'emulator', 'context': {'cluster': 'emulator', 'user': 'tester',
                                                          'namespace': namespace}}],
        }))
        return path
