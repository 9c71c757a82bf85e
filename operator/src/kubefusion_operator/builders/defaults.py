"""Spec defaulting, the way the API server applies the CRD's ``default`` values (pure)."""

from __future__ import annotations

import copy
from typing import Any

from kubefusion_operator.builders.fields import SPEC_FIELDS, Field


def with_defaults(spec: dict[str, Any] | None) -> dict[str, Any]:
    """A deep copy of ``spec`` with every absent field set to its default.

    Mirrors structural-schema defaulting: known objects default to ``{}`` so their children default too, an
    explicit ``null`` on a non-nullable field counts as absent, fields without a default stay absent, and
    unknown keys are kept (validation reports them). The API server does this already when the CRD is
    installed; the operator does it again so the API emulator, and a spec read before defaulting, give the
    same children.
    """
    return _fill(SPEC_FIELDS, copy.deepcopy(spec) if spec else {})


def _fill(table: dict[str, Any], obj: dict[str, Any]) -> dict[str, Any]:
    for key, node in table.items():
        value = obj.get(key)
        if isinstance(node, dict):
            if value is None:
                obj[key] = value = {}
            if isinstance(value, dict):
                _fill(node, value)
        elif value is None and not (key in obj and node.nullable):
            if isinstance(node, Field) and node.has_default:
                obj[key] = copy.deepcopy(node.default)
            elif key in obj:
                del obj[key]
    return obj
