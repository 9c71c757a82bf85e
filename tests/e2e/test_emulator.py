"""The API emulator behaves as a real Kubernetes API server does where the operator, kopf and kubectl rely on it."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from typing import Any

import kubernetes
import pytest
import requests
from kubernetes.client.rest import ApiException

from .emulator import EmulatorThread

GROUP, VERSION, PLURAL = 'example.com', 'v1', 'widgets'

WIDGET_CRD = {
    'apiVersion': 'apiextensions.k8s.io/v1', 'kind': 'CustomResourceDefinition',
    'metadata': {'name': f'{PLURAL}.{GROUP}'},
    'spec': {
        'group': GROUP, 'scope': 'Namespaced',
        'names': {'kind': 'Widget', 'plural': PLURAL, 'singular': 'widget', 'shortNames': ['wd']},
        'versions': [{
            'name': VERSION, 'served': True, 'storage': True,
            'schema': {'openAPIV3Schema': {'type': 'object', 'x-kubernetes-preserve-unknown-fields': True}},
            'subresources': {'status': {}},
            'additionalPrinterColumns': [{'name': 'Phase', 'type': 'string', 'jsonPath': '.status.phase'}],
        }],
    },
}


@pytest.fixture()
def crds(api_client: kubernetes.client.ApiClient) -> kubernetes.client.ApiextensionsV1Api:
    api = kubernetes.client.ApiextensionsV1Api(api_client)
    api.create_custom_resource_definition(WIDGET_CRD)
    return api


@pytest.fixture()
def custom(api_client: kubernetes.client.ApiClient, crds: Any) -> kubernetes.client.CustomObjectsApi:
    return kubernetes.client.CustomObjectsApi(api_client)


@pytest.fixture()
def core(api_client: kubernetes.client.ApiClient) -> kubernetes.client.CoreV1Api:
    return kubernetes.client.CoreV1Api(api_client)


def widget(name: str, **spec: Any) -> dict[str, Any]:
    return {'apiVersion': f'{GROUP}/{VERSION}', 'kind': 'Widget', 'metadata': {'name': name}, 'spec': spec,
            'status': {'phase': 'Injected'}}


def create(custom: kubernetes.client.CustomObjectsApi, name: str, **spec: Any) -> dict[str, Any]:
    return custom.create_namespaced_custom_object(GROUP, VERSION, 'default', PLURAL, widget(name, **spec))


def test_binds_loopback_on_a_free_port(k8s_api: EmulatorThread) -> None:
    assert k8s_api.url.startswith('http://127.0.0.1:')
    with EmulatorThread() as other:
        assert other.url != k8s_api.url


def test_create_answers_201_with_server_stamped_metadata(k8s_api: EmulatorThread, custom: Any) -> None:
    response = requests.post(f'{k8s_api.url}/apis/{GROUP}/{VERSION}/namespaces/default/{PLURAL}',
                             json=widget('a', size=1))
    assert response.status_code == 201
    meta = response.json()['metadata']
    assert meta['uid'] and meta['resourceVersion'].isdigit() and meta['generation'] == 1
    assert meta['creationTimestamp'].endswith('Z') and meta['namespace'] == 'default'
    created = create(custom, 'b')  # the Python client returns the object only on a 201
    assert created['metadata']['name'] == 'b'
    assert int(created['metadata']['resourceVersion']) > int(meta['resourceVersion'])


def test_create_ignores_status_and_generate_name_makes_a_name(custom: Any) -> None:
    created = create(custom, 'a')
    assert 'status' not in created
    body = widget('')
    body['metadata'] = {'generateName': 'w-'}
    generated = custom.create_namespaced_custom_object(GROUP, VERSION, 'default', PLURAL, body)
    assert generated['metadata']['name'].startswith('w-') and len(generated['metadata']['name']) > 2


def test_generation_bumps_on_spec_change_but_not_on_status_or_metadata(custom: Any) -> None:
    create(custom, 'a', size=1)
    patched = custom.patch_namespaced_custom_object(GROUP, VERSION, 'default', PLURAL, 'a', {'spec': {'size': 2}})
    assert patched['metadata']['generation'] == 2
    patched = custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, 'default', PLURAL, 'a', {'status': {'phase': 'Running'}})
    assert patched['metadata']['generation'] == 2 and patched['status'] == {'phase': 'Running'}
    patched = custom.patch_namespaced_custom_object(
        GROUP, VERSION, 'default', PLURAL, 'a', {'metadata': {'labels': {'x': 'y'}}})
    assert patched['metadata']['generation'] == 2


def test_status_subresource_isolation(custom: Any) -> None:
    create(custom, 'a', size=1)
    main = custom.patch_namespaced_custom_object(
        GROUP, VERSION, 'default', PLURAL, 'a', {'spec': {'size': 3}, 'status': {'phase': 'Hacked'}})
    assert main['spec'] == {'size': 3} and 'status' not in main
    status = custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, 'default', PLURAL, 'a', {'spec': {'size': 9}, 'status': {'phase': 'Running'}})
    assert status['spec'] == {'size': 3} and status['status'] == {'phase': 'Running'}
    replaced = custom.replace_namespaced_custom_object(
        GROUP, VERSION, 'default', PLURAL, 'a', dict(status, status={'phase': 'Replaced'}, spec={'size': 4}))
    assert replaced['status'] == {'phase': 'Running'} and replaced['spec'] == {'size': 4}


def test_noop_patch_keeps_the_resource_version(custom: Any) -> None:
    created = create(custom, 'a', size=1)
    patched = custom.patch_namespaced_custom_object(GROUP, VERSION, 'default', PLURAL, 'a', {'spec': {'size': 1}})
    assert patched['metadata']['resourceVersion'] == created['metadata']['resourceVersion']


def test_merge_patch_deletes_with_null_and_json_patch_test_failure_is_422(k8s_api: EmulatorThread,
                                                                          custom: Any) -> None:
    create(custom, 'a', size=1, colour='red')
    url = f'{k8s_api.url}/apis/{GROUP}/{VERSION}/namespaces/default/{PLURAL}/a'
    merged = requests.patch(url, data=json.dumps({'spec': {'colour': None}}),
                            headers={'Content-Type': 'application/merge-patch+json'})
    assert merged.status_code == 200 and merged.json()['spec'] == {'size': 1}
    failed = requests.patch(url, data=json.dumps([{'op': 'test', 'path': '/spec/size', 'value': 2},
                                                  {'op': 'replace', 'path': '/spec/size', 'value': 5}]),
                            headers={'Content-Type': 'application/json-patch+json'})
    assert failed.status_code == 422 and failed.json()['kind'] == 'Status'
    assert requests.get(url).json()['spec'] == {'size': 1}
    passed = requests.patch(url, data=json.dumps([{'op': 'test', 'path': '/spec/size', 'value': 1},
                                                  {'op': 'replace', 'path': '/spec/size', 'value': 5}]),
                            headers={'Content-Type': 'application/json-patch+json'})
    assert passed.status_code == 200 and passed.json()['spec'] == {'size': 5}
    strategic = requests.patch(url, data=json.dumps({'spec': {'size': 6}}),
                               headers={'Content-Type': 'application/strategic-merge-patch+json'})
    assert strategic.status_code == 415  # custom resources do not support strategic merge


def test_conflicts_on_create_and_on_stale_resource_version(custom: Any) -> None:
    first = create(custom, 'a', size=1)
    with pytest.raises(ApiException) as exists:
        create(custom, 'a')
    assert exists.value.status == 409 and json.loads(exists.value.body)['reason'] == 'AlreadyExists'
    custom.patch_namespaced_custom_object(GROUP, VERSION, 'default', PLURAL, 'a', {'spec': {'size': 2}})
    with pytest.raises(ApiException) as stale:
        custom.replace_namespaced_custom_object(GROUP, VERSION, 'default', PLURAL, 'a', dict(first, spec={'size': 3}))
    assert stale.value.status == 409 and json.loads(stale.value.body)['reason'] == 'Conflict'
    with pytest.raises(ApiException) as stale_patch:
        custom.patch_namespaced_custom_object(GROUP, VERSION, 'default', PLURAL, 'a', {
            'metadata': {'resourceVersion': first['metadata']['resourceVersion']}, 'spec': {'size': 4}})
    assert stale_patch.value.status == 409
    unconditional = dict(first, spec={'size': 3})
    unconditional['metadata'] = {k: v for k, v in first['metadata'].items() if k != 'resourceVersion'}
    with pytest.raises(ApiException) as no_version:
        custom.replace_namespaced_custom_object(GROUP, VERSION, 'default', PLURAL, 'a', unconditional)
    assert no_version.value.status == 422


def test_label_selectors_and_typed_lists(custom: Any, core: kubernetes.client.CoreV1Api) -> None:
    for name, labels in (('a', {'app': 'x', 'tier': 'db'}), ('b', {'app': 'y'}), ('c', {})):
        core.create_namespaced_config_map('default', {'metadata': {'name': name, 'labels': labels}})

    def names(selector: str) -> list[str]:
        return [cm.metadata.name for cm in core.list_namespaced_config_map('default', label_selector=selector).items]

    assert names('app=x') == ['a']
    assert names('app!=x') == ['b', 'c']
    assert names('app in (x, y)') == ['a', 'b']
    assert names('app notin (x)') == ['b', 'c']
    assert names('tier') == ['a']
    assert names('!app') == ['c']
    assert names('app=x,tier=db') == ['a']
    listing = core.list_namespaced_config_map('default')
    assert listing.kind == 'ConfigMapList' and listing.metadata.resource_version.isdigit()
    create(custom, 'w')
    widgets = custom.list_namespaced_custom_object(GROUP, VERSION, 'default', PLURAL)
    assert widgets['kind'] == 'WidgetList' and widgets['apiVersion'] == f'{GROUP}/{VERSION}'


def _watch(k8s_api: EmulatorThread, **params: Any) -> list[tuple[str, str]]:
    """A raw watch; it must end by itself at ``timeoutSeconds`` (the client would wait 30 s)."""
    started = time.monotonic()
    response = requests.get(f'{k8s_api.url}/api/v1/namespaces/default/configmaps',
                            params=dict(watch='true', **params), stream=True, timeout=30)
    events = [json.loads(line) for line in response.iter_lines() if line]
    assert time.monotonic() - started < float(params['timeoutSeconds']) + 10
    return [(e['type'], e['object']['metadata']['name']) for e in events]


def test_watch_from_a_resource_version_sends_only_newer_events_and_honours_timeout(
        k8s_api: EmulatorThread, core: kubernetes.client.CoreV1Api) -> None:
    core.create_namespaced_config_map('default', {'metadata': {'name': 'old'}})
    listing = core.list_namespaced_config_map('default')
    core.create_namespaced_config_map('default', {'metadata': {'name': 'new'}})
    core.patch_namespaced_config_map('old', 'default', {'data': {'k': 'v'}})
    core.delete_namespaced_config_map('new', 'default')
    since = _watch(k8s_api, resourceVersion=listing.metadata.resource_version, timeoutSeconds='1')
    assert since == [('ADDED', 'new'), ('MODIFIED', 'old'), ('DELETED', 'new')]
    assert _watch(k8s_api, timeoutSeconds='1') == [('ADDED', 'old')]


def test_watch_streams_live_events_with_label_selector_transitions(
        k8s_api: EmulatorThread, core: kubernetes.client.CoreV1Api) -> None:
    core.create_namespaced_config_map('default', {'metadata': {'name': 'a', 'labels': {'app': 'x'}}})
    seen: list[tuple[str, str]] = []
    watcher = threading.Thread(target=lambda: seen.extend(_watch(k8s_api, labelSelector='app=x', timeoutSeconds='3')))
    watcher.start()
    deadline = time.monotonic() + 10
    while not k8s_api.call(lambda emulator: len(emulator._watchers)) and time.monotonic() < deadline:
        time.sleep(0.02)  # the watch is subscribed before the changes it must see live
    core.create_namespaced_config_map('default', {'metadata': {'name': 'b', 'labels': {'app': 'other'}}})
    core.patch_namespaced_config_map('a', 'default', {'metadata': {'labels': {'app': 'gone'}}})
    core.patch_namespaced_config_map('b', 'default', {'metadata': {'labels': {'app': 'x'}}})
    watcher.join()
    assert seen == [('ADDED', 'a'), ('DELETED', 'a'), ('ADDED', 'b')]


def test_python_client_watch_resumes_from_list(core: kubernetes.client.CoreV1Api) -> None:
    core.create_namespaced_config_map('default', {'metadata': {'name': 'a'}})
    listing = core.list_namespaced_config_map('default')
    core.create_namespaced_config_map('default', {'metadata': {'name': 'b'}})
    stream = kubernetes.watch.Watch().stream(core.list_namespaced_config_map, 'default',
                                             resource_version=listing.metadata.resource_version, timeout_seconds=1)
    assert [(e['type'], e['object'].metadata.name) for e in stream] == [('ADDED', 'b')]


def test_finalizers_hold_deletion_until_removed(custom: Any) -> None:
    body = widget('a')
    body['metadata']['finalizers'] = ['example.com/cleanup']
    custom.create_namespaced_custom_object(GROUP, VERSION, 'default', PLURAL, body)
    custom.delete_namespaced_custom_object(GROUP, VERSION, 'default', PLURAL, 'a')
    held = custom.get_namespaced_custom_object(GROUP, VERSION, 'default', PLURAL, 'a')
    assert held['metadata']['deletionTimestamp']
    custom.patch_namespaced_custom_object(GROUP, VERSION, 'default', PLURAL, 'a', {'metadata': {'finalizers': None}})
    with pytest.raises(ApiException) as gone:
        custom.get_namespaced_custom_object(GROUP, VERSION, 'default', PLURAL, 'a')
    assert gone.value.status == 404


def test_unregistered_resources_and_namespaces_are_404(api_client: Any, core: kubernetes.client.CoreV1Api) -> None:
    custom = kubernetes.client.CustomObjectsApi(api_client)
    with pytest.raises(ApiException) as unknown:
        custom.list_namespaced_custom_object('kubeflow.org', 'v1', 'default', 'pytorchjobs')
    assert unknown.value.status == 404
    with pytest.raises(ApiException) as no_namespace:
        core.create_namespaced_config_map('nowhere', {'metadata': {'name': 'a'}})
    assert no_namespace.value.status == 404
    with pytest.raises(ApiException) as missing:
        core.read_namespaced_config_map('missing', 'default')
    assert missing.value.status == 404 and json.loads(missing.value.body)['reason'] == 'NotFound'


def test_discovery_follows_posted_and_deleted_crds(k8s_api: EmulatorThread, api_client: Any) -> None:
    assert requests.get(f'{k8s_api.url}/apis/{GROUP}/{VERSION}').status_code == 404
    crds = kubernetes.client.ApiextensionsV1Api(api_client)
    crds.create_custom_resource_definition(WIDGET_CRD)
    groups = requests.get(f'{k8s_api.url}/apis').json()['groups']
    assert any(group['name'] == GROUP for group in groups)
    resources = requests.get(f'{k8s_api.url}/apis/{GROUP}/{VERSION}').json()['resources']
    by_name = {r['name']: r for r in resources}
    assert by_name[PLURAL]['kind'] == 'Widget' and by_name[PLURAL]['namespaced'] is True
    assert by_name[PLURAL]['shortNames'] == ['wd'] and f'{PLURAL}/status' in by_name
    established = crds.read_custom_resource_definition(f'{PLURAL}.{GROUP}')
    assert {c.type: c.status for c in established.status.conditions}['Established'] == 'True'
    assert 'shortNames' not in by_name[f'{PLURAL}/status']  # else kubectl calls the short name ambiguous
    core_v1 = requests.get(f'{k8s_api.url}/api/v1').json()
    assert core_v1['groupVersion'] == 'v1'
    assert {'configmaps', 'events', 'namespaces'} <= {r['name'] for r in core_v1['resources']}
    crds.delete_custom_resource_definition(f'{PLURAL}.{GROUP}')
    assert requests.get(f'{k8s_api.url}/apis/{GROUP}/{VERSION}').status_code == 404


def test_table_rendering_uses_printer_columns(k8s_api: EmulatorThread, custom: Any) -> None:
    create(custom, 'a')
    custom.patch_namespaced_custom_object_status(GROUP, VERSION, 'default', PLURAL, 'a', {'status': {'phase': 'Up'}})
    table = requests.get(f'{k8s_api.url}/apis/{GROUP}/{VERSION}/namespaces/default/{PLURAL}',
                         headers={'Accept': 'application/json;as=Table;v=v1;g=meta.k8s.io'}).json()
    assert table['kind'] == 'Table'
    assert [c['name'] for c in table['columnDefinitions']] == ['Name', 'Phase']
    assert table['rows'][0]['cells'] == ['a', 'Up']


def test_injected_failures_take_precedence_and_store_nothing(k8s_api: EmulatorThread,
                                                             core: kubernetes.client.CoreV1Api) -> None:
    k8s_api.emulator['post', k8s_api.emulator.resource('', 'v1', 'configmaps')][:1] << 503
    with pytest.raises(ApiException) as unavailable:
        core.create_namespaced_config_map('default', {'metadata': {'name': 'a'}})
    assert unavailable.value.status == 503
    assert core.list_namespaced_config_map('default').items == []
    core.create_namespaced_config_map('default', {'metadata': {'name': 'a'}})  # the injection was one-shot


def test_kubectl_discovers_reads_and_prints_tables(k8s_api: EmulatorThread, custom: Any, tmp_path: Any) -> None:
    kubeconfig = k8s_api.write_kubeconfig(tmp_path / 'kubeconfig')
    create(custom, 'a')
    custom.patch_namespaced_custom_object_status(GROUP, VERSION, 'default', PLURAL, 'a', {'status': {'phase': 'Up'}})

    def kubectl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([shutil.which('kubectl') or '/usr/bin/kubectl', '--kubeconfig', str(kubeconfig), *args],
                              capture_output=True, text=True, timeout=60)

    widgets = kubectl('get', 'wd')
    assert widgets.returncode == 0 and widgets.stderr == ''
    assert widgets.stdout.split() == ['NAME', 'PHASE', 'a', 'Up']
    assert kubectl('get', 'configmaps').returncode == 0
    # kubectl writes built-in kinds as protobuf, which the emulator does not decode: it says so (415).
    refused = kubectl('create', 'configmap', 'x')
    assert refused.returncode != 0 and 'not protobuf' in refused.stderr
