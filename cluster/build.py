#!/usr/bin/env python3
"""Build the test control plane from the Go modules pinned in cluster/ (see cluster/README.md).

    python3 cluster/build.py            # build if needed; print the folder that holds bin/ and manifests/
    python3 cluster/build.py --force    # rebuild even if a build for these go.sum files exists

Output (``<key>`` hashes the go.mod/go.sum files, cmd/etcd and this script's RECIPE):
    cluster/.build/<key>/bin/        etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, kwok,
                                     training-operator, trainer-controller-manager, jobset-controller-manager,
                                     kueue-controller-manager
    cluster/.build/<key>/manifests/  each controller's CRDs, webhook and RBAC manifests, copied from its module
    cluster/.build/<key>/build.json  versions, go version, seconds per binary

The first build on a machine goes into a machine-wide cache, ``$KUBEFUSION_CLUSTER_CACHE`` or
``${XDG_CACHE_HOME:-~/.cache}/kubefusion/cluster/<key>/`` (the way setup-envtest keeps binaries), and
cluster/.build/ hard-links it; a fresh clone on the same machine therefore links nothing. Go's own module and
build caches are used as always, so a changed pin recompiles only what changed.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
LOCAL = HERE / ".build"
# Bump when the binaries' flags or the output layout change: a new key, so no stale build is reused.
RECIPE = "3: CGO_ENABLED=0 -trimpath -s -w, version ldflags, manifests copied"
KEYED_FILES = ("go.mod", "go.sum", "training-operator/go.mod", "training-operator/go.sum", "cmd/etcd/main.go")
DONE = "build.json"  # written last: a folder without it is an interrupted build
KEEP = 3  # builds kept in the machine-wide cache (most recently used); clones hold hard links to theirs


@dataclass(frozen=True)
class Binary:
    name: str
    package: str
    module_dir: str = "."  # the Go module (folder under cluster/) it is built in
    version_of: str = ""  # the module whose version it reports (ldflags below use it)
    ldflags: tuple[str, ...] = field(default_factory=tuple)  # -X settings; {version} {major} {minor} {date}


def _kube_version_ldflags() -> tuple[str, ...]:
    # What Kubernetes' hack/lib/version.sh sets, for the server (component-base) and for kubectl's client side
    # (client-go). "archive" is its tree state for a build from a source archive rather than a git checkout;
    # the module proxy does not say which commit a version is, so gitCommit is left empty rather than made up.
    flags = []
    for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [f"{package}.gitVersion={{version}}", f"{package}.gitMajor={{major}}",
                  f"{package}.gitMinor={{minor}}", f"{package}.gitCommit=", f"{package}.gitTreeState=archive",
                  f"{package}.buildDate={{date}}"]
    return tuple(flags)


KUBE = _kube_version_ldflags()
BINARIES = (
    Binary("etcd", "./cmd/etcd", version_of="go.etcd.io/etcd/server/v3"),  # the version is a constant in etcd
    *(Binary(name, f"k8s.io/kubernetes/cmd/{name}", version_of="k8s.io/kubernetes", ldflags=KUBE)
      for name in ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")),
    Binary("kwok", "sigs.k8s.io/kwok/cmd/kwok", version_of="sigs.k8s.io/kwok"),  # consts.Version is set in source
    Binary("training-operator", "github.com/kubeflow/training-operator/cmd/training-operator.v1",
           module_dir="training-operator", version_of="github.com/kubeflow/training-operator"),
    Binary("trainer-controller-manager", "github.com/kubeflow/trainer/v2/cmd/trainer-controller-manager",
           version_of="github.com/kubeflow/trainer/v2"),
    Binary("jobset-controller-manager", "sigs.k8s.io/jobset", version_of="sigs.k8s.io/jobset",
           ldflags=("sigs.k8s.io/jobset/pkg/version.GitVersion={version}",
                    "sigs.k8s.io/jobset/pkg/version.GitCommit=unknown")),
    Binary("kueue-controller-manager", "sigs.k8s.io/kueue/cmd/kueue", version_of="sigs.k8s.io/kueue",
           ldflags=("sigs.k8s.io/kueue/pkg/version.GitVersion={version}",
                    "sigs.k8s.io/kueue/pkg/version.GitCommit=unknown",
                    "sigs.k8s.io/kueue/pkg/version.BuildDate={date}")),
)

# Non-Go files the tests need from each module: (module folder under cluster/, module, folder in it, name).
MANIFESTS = (
    ("training-operator", "github.com/kubeflow/training-operator", "manifests/base", "training-operator"),
    (".", "github.com/kubeflow/trainer/v2", "manifests", "trainer"),
    (".", "sigs.k8s.io/jobset", "config/components", "jobset"),
    (".", "sigs.k8s.io/kueue", "config/components", "kueue"),
    (".", "sigs.k8s.io/kwok", "kustomize/stage", "kwok-stages"),  # its node stages (the pod stages are ours)
)


def key() -> str:
    """Names a build: changes whenever a pin, the etcd entry point or the recipe does."""
    digest = hashlib.sha256(RECIPE.encode())
    for name in KEYED_FILES:
        digest.update(name.encode() + b"\0" + (HERE / name).read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def cache_root() -> Path:
    if os.environ.get("KUBEFUSION_CLUSTER_CACHE"):
        return Path(os.environ["KUBEFUSION_CLUSTER_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kubefusion" / "cluster"


def complete(folder: Path) -> bool:
    return (folder / DONE).is_file() and all((folder / "bin" / b.name).is_file() for b in BINARIES)


def find() -> Path | None:
    """A finished build for the current pins (local folder first, then the machine-wide cache), or None."""
    k = key()
    for folder in (LOCAL / k, cache_root() / k):
        if complete(folder):
            return folder
    return None


def _go_env() -> dict[str, str]:
    # -mod=mod would let go rewrite go.mod; readonly makes a stale go.sum an error instead of a silent change.
    return {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-mod=readonly", "GOWORK": "off"}


def _module(module_dir: str, module: str) -> dict[str, str]:
    out = subprocess.run(["go", "list", "-m", "-json", module], cwd=HERE / module_dir, env=_go_env(),
                         check=True, capture_output=True, text=True).stdout
    info = json.loads(out)
    if info.get("Replace"):
        info = {**info, **info["Replace"]}
    return info


def _release_date(module: str, version: str) -> str:
    """The module version's publication time from the proxy's .info: an honest, reproducible buildDate."""
    out = subprocess.run(["go", "mod", "download", "-json", f"{module}@{version}"], cwd=HERE, env=_go_env(),
                         check=True, capture_output=True, text=True).stdout
    return json.loads(Path(json.loads(out)["Info"]).read_text())["Time"]


def _ldflags(binary: Binary, version: str, date: str) -> str:
    major, minor = version.lstrip("v").split(".")[:2]
    settings = [s.format(version=version, major=major, minor=minor, date=date) for s in binary.ldflags]
    return " ".join(["-s", "-w", *(f"-X {s}" for s in settings)])


def _say(message: str) -> None:
    print(f"cluster/build.py: {message}", file=sys.stderr, flush=True)


def build_into(out: Path) -> dict[str, object]:
    """Build every binary and copy every manifest folder into ``out`` (which must be empty or absent)."""
    (out / "bin").mkdir(parents=True, exist_ok=True)
    record: dict[str, object] = {"go": subprocess.run(["go", "env", "GOVERSION"], capture_output=True,
                                                      text=True, check=True).stdout.strip(),
                                 "versions": {}, "seconds": {}}
    started = time.monotonic()
    for binary in BINARIES:
        info = _module(binary.module_dir, binary.version_of)
        version = info["Version"]
        tick = time.monotonic()
        _say(f"building {binary.name} ({binary.version_of} {version})")
        subprocess.run(["go", "build", "-trimpath", "-ldflags", _ldflags(binary, version, _release_date(
            binary.version_of, version)), "-o", str(out / "bin" / binary.name), binary.package],
            cwd=HERE / binary.module_dir, env=_go_env(), check=True)
        record["versions"][binary.name] = version  # type: ignore[index]
        record["seconds"][binary.name] = round(time.monotonic() - tick, 1)  # type: ignore[index]
    for module_dir, module, folder, name in MANIFESTS:
        source = Path(_module(module_dir, module)["Dir"]) / folder
        shutil.copytree(source, out / "manifests" / name)
        for path in (out / "manifests" / name).rglob("*"):  # the module cache is read-only; copies need not be
            path.chmod(0o755 if path.is_dir() else 0o644)
    record["total_seconds"] = round(time.monotonic() - started, 1)
    record["bytes"] = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    (out / DONE).write_text(json.dumps(record, indent=2) + "\n")
    return record


def _link_tree(source: Path, target: Path) -> None:
    """``target`` as a copy of ``source`` made of hard links (a real copy across file systems)."""
    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)
    shutil.copytree(source, target, copy_function=link)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # a second build of the same key waits for the first, then reuses it
        yield


def _prune(root: Path) -> None:
    """Keep the ``KEEP`` most recently used builds (each is several hundred MB), and no interrupted one older
    than a day."""
    builds = sorted((p for p in root.iterdir() if (p / DONE).is_file()), key=lambda p: p.stat().st_mtime)
    interrupted = [p for p in root.glob("*.tmp-*") if time.time() - p.stat().st_mtime > 86400]
    for old in builds[:-KEEP] + interrupted:
        shutil.rmtree(old, ignore_errors=True)


def ensure(force: bool = False) -> Path:
    """The build folder for the current pins, building it first if there is none. Raises if Go is missing
    and nothing is built."""
    k = key()
    local, shared = LOCAL / k, cache_root() / k
    if not force and complete(local):
        return local
    with _locked(cache_root() / f"{k}.lock"):
        if force or not complete(shared):
            if shutil.which("go") is None:
                raise RuntimeError("Go is not installed and no control plane is built for these pins")
            tmp = shared.with_name(f"{k}.tmp-{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            record = build_into(tmp)
            shutil.rmtree(shared, ignore_errors=True)
            tmp.rename(shared)
            _say(f"built in {record['total_seconds']} s, {int(record['bytes']) / 2**20:.0f} MiB: {shared}")
        os.utime(shared)  # most recently used
        _prune(cache_root())
        LOCAL.mkdir(exist_ok=True)
        for stale in LOCAL.iterdir():  # one build per clone is enough; the machine-wide cache keeps the rest
            if stale.name != k:
                shutil.rmtree(stale, ignore_errors=True)
        tmp = LOCAL / f"{k}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        _link_tree(shared, tmp)
        shutil.rmtree(local, ignore_errors=True)
        tmp.rename(local)
    return local


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--force", action="store_true", help="rebuild even if a build for these pins exists")
    args = parser.parse_args(argv)
    try:
        print(ensure(force=args.force))
    except (RuntimeError, subprocess.CalledProcessError) as err:
        _say(str(err))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
