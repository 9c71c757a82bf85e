"""Spec defaulting, the way the API server applies the CRD's ``default`` values (pure)."""

from __future__ import annotations

import copy
from typing import Any

from kubefusion_operator.builders.fields import SPEC_FIELDS


def with_image(spec: dict[str, Any] | None, default_image: str | None) -> dict[str, Any]:
    """``spec`` (a shallow copy) with ``image`` set to ``default_image`` when it has none (absent or null).

    The operator's default trainer image is the one default the CRD cannot hold: it is a setting of the
    operator (the Helm value ``trainer.image``), so the caller passes it in. Nothing else is defaulted here,
    so the result is still the spec as written, fit to record as what the children were built from.
    """
    spec = dict(spec or {})
    if spec.get("image") is None and default_image:
        spec["image"] = default_image
    return spec


def with_defaults(spec: dict[str, Any] | None) -> dict[str, Any]:
    """A deep copy of ``spec`` with every absent field set to its default (``image`` has none: see
    :func:`with_image`).

    Mirrors structural-schema defaulting: known objects default to ``{}`` so their children default too, an
    explicit ``null`` on a non-nullable field counts as absent, fields without a default stay absent, and
    unknown keys are kept (validation reports them). The API server does this already when the CRD is
    installed; the operator does it again so the API emulator, and a spec read before defaulting, give the
    same children. Keys come out in the CRD's order, then unknown ones, so rendering does not depend on the
    order the user wrote them in.
    """
    return _fill(SPEC_FIELDS, copy.deepcopy(spec) if spec else {})


def _fill(table: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, node in table.items():
        value = given.get(key)
        if isinstance(node, dict):
            out[key] = _fill(node, {} if value is None else value) if value is None or isinstance(value, dict) \
                else value
        elif value is not None or (key in given and node.nullable):
            out[key] = value
        elif node.has_default:
            out[key] = copy.deepcopy(node.default)
    out.update((key, value) for key, value in given.items() if key not in table)
    return out
