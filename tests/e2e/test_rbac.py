"""manifests/rbac.yaml as a document: the ServiceAccount it binds, valid objects, no wildcard and no delete.
(That it is enough for the operator's whole job and all of it is used: tests/cluster/test_rbac.py, on a real
API server with its audit log.)"""

from __future__ import annotations

import kubernetes_validate
import yaml

from .harness import REPO


def rbac_documents() -> dict[str, dict]:
    return {d['kind']: d for d in yaml.safe_load_all((REPO / 'manifests' / 'rbac.yaml').read_text()) if d}


def test_rbac_binds_the_operator_service_account() -> None:
    documents = rbac_documents()
    account = documents['ServiceAccount']['metadata']
    assert (account['name'], account['namespace']) == ('kubefusion-operator', 'kubefusion-system')
    binding = documents['ClusterRoleBinding']
    assert binding['roleRef'] == {'apiGroup': 'rbac.authorization.k8s.io', 'kind': 'ClusterRole',
                                  'name': documents['ClusterRole']['metadata']['name']}
    assert binding['subjects'] == [{'kind': 'ServiceAccount', 'name': 'kubefusion-operator',
                                    'namespace': 'kubefusion-system'}]
    for document in documents.values():
        kubernetes_validate.validate(document, '1.28.0', strict=True)
    for rule in documents['ClusterRole']['rules']:
        assert '*' not in rule['verbs'] + rule['resources'] + rule['apiGroups']
        assert 'delete' not in rule['verbs']
