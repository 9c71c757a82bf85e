"""What the real API server refuses (docs/operator.md, "Where the rules live" and "What may change after
creation"): each documented invalid spec, with the CRD's message on the field it names; and what it accepts:
every example. Server-side dry runs, so nothing is stored and no operator is needed."""

from __future__ import annotations

import copy
import json
from typing import Any

import kubernetes
import pytest
import yaml

from kube_harness import REPO, job_body

from .conftest import make_namespace, retire
from .kube import MTJ, Namespace

CRD = yaml.safe_load((REPO / 'manifests' / 'crd.yaml').read_text())
SCHEMA = CRD['spec']['versions'][0]['schema']['openAPIV3Schema']


@pytest.fixture(scope='module')
def namespace(control_plane, installed) -> Namespace:  # noqa: F811  (one namespace for these dry runs)
    """One namespace for the whole module: dry runs store nothing, and the few stored jobs have unique names."""
    ns = make_namespace(control_plane, 'validation', claims=())
    yield ns
    retire(control_plane, ns.name)


def rule_message(*path: str, rule: str | None = None) -> str:
    """The message of the CEL rule at ``spec.<path>`` in the CRD (the first, or the one whose rule contains ``rule``),
    with its line breaks as the API server returns it."""
    node = SCHEMA['properties']['spec']
    for key in path:
        node = node['properties'][key]
    rules = node['x-kubernetes-validations']
    chosen = next(r for r in rules if rule is None or rule in r['rule'])
    return ' '.join(chosen['message'].split())


def refusal(ns: Namespace, body: dict[str, Any], *, update_of: dict[str, Any] | None = None) -> str:
    """The API server's message refusing ``body`` (a create, or an update of the stored ``update_of``)."""
    try:
        if update_of is None:
            ns.custom.create_namespaced_custom_object(*MTJ[:2], ns.name, MTJ[2], body, dry_run='All')
        else:
            body = {**body, 'metadata': {**body['metadata'],
                                         'resourceVersion': update_of['metadata']['resourceVersion']}}
            ns.custom.replace_namespaced_custom_object(*MTJ[:2], ns.name, MTJ[2], body['metadata']['name'], body,
                                                       dry_run='All')
    except kubernetes.client.ApiException as e:
        assert e.status == 422, e.body
        return ' '.join(json.loads(e.body)['message'].split())
    raise AssertionError(f'the API server accepted {body}')


def spec_with(**changes: Any) -> dict[str, Any]:
    body = job_body('products')
    for dotted, value in changes.items():
        node = body['spec']
        *parents, leaf = dotted.split('__')
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return body


CREATE_REFUSALS = [
    ('data__validationFraction', 0.6, 'data__testFraction', 0.4, ('data',), None, 'spec.data'),
    ('model__fusion', {'type': 'attention', 'hidden': 10, 'heads': 3}, None, None, ('model', 'fusion'), None,
     'spec.model.fusion'),
    ('monitoring__metricsPort', 80, None, None, ('monitoring', 'metricsPort'), None, 'spec.monitoring.metricsPort'),
    ('data__source', {'emptyDir': {}}, None, None, ('data', 'source'), None, 'spec.data.source'),
]


@pytest.mark.parametrize('key, value, key2, value2, path, rule, where', CREATE_REFUSALS,
                         ids=[c[0].replace('__', '.') for c in CREATE_REFUSALS])
def test_cross_field_rules_refuse_with_the_crds_message(namespace: Namespace, key, value, key2, value2, path, rule,
                                                         where) -> None:
    changes = {key: value, **({key2: value2} if key2 else {})}
    message = refusal(namespace, spec_with(**changes))
    assert where in message and rule_message(*path, rule=rule) in message


def test_data_source_names_one_volume_type(namespace: Namespace) -> None:
    two = {'persistentVolumeClaim': {'claimName': 'a'}, 'nfs': {'server': 's', 'path': '/x'}}
    message = refusal(namespace, spec_with(data__source=two))
    assert 'spec.data.source' in message


@pytest.mark.parametrize('checkpoints', [None, {'emptyDir': {}}, {'hostPath': {'path': '/mnt/runs'}}],
                         ids=['none', 'emptyDir', 'hostPath'])
def test_multi_node_jobs_without_shared_checkpoints_are_refused(namespace: Namespace, checkpoints) -> None:
    body = job_body('products', nodes=2)
    if checkpoints is None:
        del body['spec']['storage']
    else:
        body['spec']['storage'] = {'checkpoints': checkpoints}
    message = refusal(namespace, body)
    assert 'spec.storage.checkpoints' in message
    assert ' '.join(SCHEMA['properties']['spec']['x-kubernetes-validations'][0]['message'].split()) in message


@pytest.mark.parametrize('name', ['1products', 'Products', 'products-', 'x' * 51])
def test_bad_names_are_refused(namespace: Namespace, name: str) -> None:
    body = job_body(name)
    message = refusal(namespace, body)
    assert ' '.join(SCHEMA['x-kubernetes-validations'][0]['message'].split()) in message or 'metadata.name' in message


@pytest.mark.parametrize('section, change', [
    ('image', 'registry.example.com/other:1'),
    ('data', {'path': 'other/'}),
    ('preprocessing', {'imageSize': 128}),
    ('model', {'embedDim': 128}),
    ('training', {'epochs': 2}),
    ('resources', {'nodes': 3}),
    ('monitoring', {'metricsPort': 9100}),
    ('scheduling', {'queue': 'team-b'}),
    ('storage', {'checkpoints': {'persistentVolumeClaim': {'claimName': 'elsewhere'}}}),
])
def test_fixed_sections_cannot_change_after_creation(namespace: Namespace, section: str, change: Any) -> None:
    stored = namespace.create_job(job_body(f'fixed-{section}'))
    changed = copy.deepcopy(stored)
    if isinstance(change, dict):
        changed['spec'].setdefault(section, {}).update(change)
    else:
        changed['spec'][section] = change
    message = refusal(namespace, changed, update_of=stored)
    assert f'spec.{section} is immutable once the job is created' in message


def test_a_change_inside_a_volume_type_the_crd_does_not_describe_is_refused_too(namespace: Namespace) -> None:
    # data.source keeps unknown fields (any volume type); `self == oldSelf` compares them all the same.
    iscsi = {'iscsi': {'targetPortal': '10.0.0.9:3260', 'iqn': 'iqn.2026-01.io.example:data', 'lun': 0}}
    stored = namespace.create_job(job_body('iscsi', nodes=1, data={'source': iscsi, 'path': 'products/'}))
    changed = copy.deepcopy(stored)
    changed['spec']['data']['source']['iscsi']['lun'] = 1
    assert 'spec.data is immutable once the job is created' in refusal(namespace, changed, update_of=stored)


def test_image_cannot_be_added_or_removed_and_run_policy_may_change(namespace: Namespace) -> None:
    stored = namespace.create_job(job_body('image-and-policy'))
    without = copy.deepcopy(stored)
    del without['spec']['image']
    assert 'cannot be added or removed' in refusal(namespace, without, update_of=stored)
    clean = copy.deepcopy(stored)
    clean['spec']['runPolicy']['cleanPodPolicy'] = 'All'
    assert 'spec.runPolicy.cleanPodPolicy is immutable' in refusal(namespace, clean, update_of=stored)
    # what may change: suspend and the limits
    namespace.patch_job('image-and-policy', {'spec': {'runPolicy': {'suspend': True, 'backoffLimit': 9,
                                                                    'activeDeadlineSeconds': 60,
                                                                    'ttlSecondsAfterFinished': 5}}})
    assert namespace.job('image-and-policy')['spec']['runPolicy']['backoffLimit'] == 9


@pytest.mark.parametrize('example', sorted(p.name for p in (REPO / 'examples').glob('*.yaml')))
def test_every_example_is_accepted(namespace: Namespace, example: str) -> None:
    documents = [d for d in yaml.safe_load_all((REPO / 'examples' / example).read_text()) if d]
    for document in documents:  # examples/job.yaml names ml-team: the test's own namespace stands in for it
        document['metadata']['namespace'] = namespace.name
    done = namespace.kubectl('apply', '--dry-run=server', '-f', '-', input=yaml.safe_dump_all(documents), check=False)
    assert done.returncode == 0, done.stderr
