"""Fixtures of the deploy tests: the external tools (helm, promtool, hadolint, kubectl) and chart rendering.

A missing tool fails the test with how to get it (`make tools`); it never skips, so a CI machine without the
tools cannot pass by testing nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from deploy_util import sync_deploy


def _tool(name: str) -> str:
    try:
        return sync_deploy.tool(name)
    except sync_deploy.ToolMissing as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def helm() -> str:
    return _tool("helm")


@pytest.fixture(scope="session")
def promtool() -> str:
    return _tool("promtool")


@pytest.fixture(scope="session")
def hadolint() -> str:
    return _tool("hadolint")


@pytest.fixture(scope="session")
def kubectl() -> str:
    return _tool("kubectl")


Render = Callable[..., list[dict[str, Any]]]


@pytest.fixture(scope="session")
def render(helm: str) -> Render:
    """render("--set", "a=b", ...) -> the objects `helm template` makes (CRDs included), parsed."""
    def _render(*args: str) -> list[dict[str, Any]]:
        try:
            return sync_deploy.helm_template(*args, include_crds=True)
        except RuntimeError as exc:
            pytest.fail(str(exc), pytrace=False)
    return _render
