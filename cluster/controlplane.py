#!/usr/bin/env python3
"""A real Kubernetes control plane on 127.0.0.1, from the binaries that cluster/build.py builds.

etcd, kube-apiserver (TLS, client-certificate and service-account-token authentication, RBAC authorization),
kube-controller-manager (garbage collector, service-account and PersistentVolume controllers, ...),
kube-scheduler and kwok (fake nodes with ``nvidia.com/gpu`` and the pod stages of cluster/kwok/) run as child
processes in their own process groups, on free loopback ports, with everything they write in one folder.
Controllers that serve admission webhooks (Kubeflow's training operator, Trainer, JobSet, Kueue) are started
with :meth:`ControlPlane.start_controller`, their webhooks served on 127.0.0.1 with a certificate of the
control plane's CA and their webhook configurations rewritten to ``url:`` with that CA as ``caBundle`` (the way
controller-runtime's envtest does it).

Library use (tests/cluster/conftest.py, benchmarks/operator_scale.py)::

    with ControlPlane(tmp_path / "cp") as cp:          # start() ... stop(); no process outlives it
        cp.kubectl("get", "nodes")
        cp.install_training_operator()

Command line (``make cluster`` / ``make cluster-down``): ``controlplane.py up ROOT`` starts it detached with
the chart and operator installed (see :func:`main`); ``controlplane.py down ROOT`` stops it.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import contextlib
import copy
import datetime
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
import build  # noqa: E402  (cluster/build.py, beside this file)

SERVICE_CIDR = "10.0.0.0/24"
POD_CIDR = "10.1.0.0/16"
NODE_IP = "10.1.0.1"
GPU = "nvidia.com/gpu"
# What a GPU node advertises; the fake nodes carry the labels NVIDIA's GPU feature discovery sets, so that
# examples/job.yaml's nodeSelector matches.
GPU_PRODUCT = "NVIDIA-A100-SXM4-80GB"
EXIT_CODE_ANNOTATION = "kwok.kubefusion.io/exit-code"
TRAINING_OPERATOR_NAMESPACE = "kubeflow"


# ----------------------------------------------------------------------------------------------- certificates


class CertificateAuthority:
    """A self-signed CA that issues the serving and client certificates of one control plane. ``rsa``: RSA keys
    in PKCS#1 (cert-controller, which the training operator and Kueue use, parses a CA key only so) rather than
    ECDSA P-256."""

    def __init__(self, common_name: str = "kubefusion-test-ca", *, days: int = 365, rsa: bool = False) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.x509.oid import NameOID

        self._days, self._rsa = days, rsa
        self.key = _new_key(rsa)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False),
                           critical=True)
            # cert-controller (training operator, Kueue) checks a CA by verifying it for its own name
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(common_name)]), critical=False)
            .sign(self.key, hashes.SHA256())
        )

    @property
    def cert_pem(self) -> bytes:
        from cryptography.hazmat.primitives import serialization
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return _key_pem(self.key, pkcs1=self._rsa)

    def issue(self, common_name: str, *, organizations: Iterable[str] = (), dns: Iterable[str] = (),
              ips: Iterable[str] = (), server: bool = False, client: bool = False) -> tuple[bytes, bytes]:
        """A leaf certificate and its key, both PEM."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.serialization import Encoding
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        key = _new_key(self._rsa)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                             *(x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations)])
        now = datetime.datetime.now(datetime.timezone.utc)
        usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + ([ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
        builder = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(self.cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=self._days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        )
        names = [x509.DNSName(d) for d in dns] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return cert.public_bytes(Encoding.PEM), _key_pem(key, pkcs1=self._rsa)


def _new_key(rsa: bool) -> Any:
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric import rsa as rsa_keys
    return rsa_keys.generate_private_key(public_exponent=65537, key_size=2048) if rsa else \
        ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: Any, *, pkcs1: bool = False) -> bytes:
    from cryptography.hazmat.primitives import serialization
    form = serialization.PrivateFormat.TraditionalOpenSSL if pkcs1 else serialization.PrivateFormat.PKCS8
    return key.private_bytes(serialization.Encoding.PEM, form, serialization.NoEncryption())


def _rsa_key_pair() -> tuple[bytes, bytes]:
    """Service-account token signing keys (private, public), PEM."""
    from cryptography.hazmat.primitives import serialization
    key = _new_key(rsa=True)
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return _key_pem(key), public


def _write(path: Path, data: bytes | str, mode: int = 0o600) -> Path:
    """Whole or nothing: a temporary name in the same folder, then a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    tmp.chmod(mode)
    tmp.replace(path)
    return path


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# -------------------------------------------------------------------------------------------------- processes


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports of 127.0.0.1, all bound at once so the kernel never hands out one twice."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the process that started it dies, even by SIGKILL, so a killed
    test run leaves no control plane behind (Linux; elsewhere the atexit hook and the pid file are all)."""
    os.setsid()
    with contextlib.suppress(Exception):
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Process:
    """One child process in a process group of its own, its output in ``log``."""

    name: str
    argv: list[str]
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    popen: subprocess.Popen[bytes] | None = None

    def start(self, *, detached: bool = False) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(
                self.argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.cwd,
                env={**os.environ, **self.env}, start_new_session=detached,
                preexec_fn=None if detached else _die_with_parent)

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, timeout: float = 10) -> None:
        if self.popen is None:
            return
        _stop_group(self.popen.pid, timeout)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=1)
        self.popen = None

    def kill(self) -> None:
        """SIGKILL, as when a pod is evicted or a node dies: no clean shutdown."""
        if self.popen is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait()
            self.popen = None

    def tail(self, lines: int = 40) -> str:
        if not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def _stop_group(pgid: int, timeout: float) -> None:
    """SIGTERM the process group, SIGKILL what is left after ``timeout``."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        with contextlib.suppress(ChildProcessError):
            os.waitpid(-pgid, os.WNOHANG)
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def wait_until(check: Callable[[], Any], timeout: float, what: str, *, interval: float = 0.1,
               processes: Iterable[Process] = ()) -> Any:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` (and the log of any process in
    ``processes`` that died meanwhile)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        for process in processes:
            if not process.alive():
                raise RuntimeError(f"{process.name} exited while waiting for {what}:\n{process.tail()}")
        try:
            last = check()
        except Exception as err:  # noqa: BLE001 - not yet
            last = err
        if last and not isinstance(last, Exception):
            return last
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}; last: {last!r}")


# ---------------------------------------------------------------------------------------------- the cluster


@dataclass
class Controller:
    """A controller started by :meth:`ControlPlane.start_controller`."""

    name: str
    process: Process
    webhook_port: int | None
    cert_dir: Path | None
    webhook_configurations: list[str]

    def stop(self) -> None:
        self.process.stop()


class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager + kube-scheduler + kwok, on loopback, under ``root``.

    ``nodes`` fake nodes advertise ``gpus_per_node`` GPUs (``nvidia.com/gpu``), 64 CPUs and 512 GiB each.
    ``pod_seconds``: a running pod that nobody annotated succeeds after that long (``make cluster``); None
    (tests) leaves pods Running until annotated with ``kwok.kubefusion.io/exit-code`` (cluster/kwok/).
    ``detached``: the processes outlive this Python process (``make cluster``); otherwise they die with it.
    ``audit``: record every request made by a ServiceAccount (``<root>/audit.log``, see :meth:`audit_events`).
    """

    external = False  # see ExternalCluster

    def __init__(self, root: Path, *, nodes: int = 4, gpus_per_node: int = 4, pod_seconds: float | None = None,
                 detached: bool = False, audit: bool = True, build_dir: Path | None = None) -> None:
        self.root = Path(root).resolve()
        self.nodes, self.gpus_per_node, self.pod_seconds = nodes, gpus_per_node, pod_seconds
        self.detached, self.audit = detached, audit
        self._build_dir = build_dir
        self.node_prefix, self.node_annotation = "gpu-node", "fake"  # kwok manages nodes annotated so
        self.processes: dict[str, Process] = {}
        self.controllers: dict[str, Controller] = {}
        self.ca: CertificateAuthority | None = None
        self.url = ""
        self._atexit = False

    # ---------------------------------------------------------------------------------------- paths and tools

    @property
    def build(self) -> Path:
        if self._build_dir is None:
            self._build_dir = build.ensure()
        return self._build_dir

    def binary(self, name: str) -> str:
        return str(self.build / "bin" / name)

    def manifests(self, component: str) -> Path:
        """A controller's manifests, copied from its Go module at build time (``training-operator``, ``trainer``,
        ``jobset``, ``kueue``, ``kwok-stages``)."""
        return self.build / "manifests" / component

    @property
    def kubeconfig(self) -> Path:
        """The admin kubeconfig (``system:masters``)."""
        return self.root / "admin.kubeconfig"

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    # ------------------------------------------------------------------------------------------ lifecycle

    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 120) -> None:
        """Start everything and return once the API server is ready and every fake node is Ready."""
        started = time.monotonic()
        self.root.mkdir(parents=True, exist_ok=True)
        if not self.detached and not self._atexit:
            atexit.register(self.stop)
            self._atexit = True
        try:
            self._write_pki()
            self._start_etcd(timeout)
            self._start_apiserver(timeout)
            self._start("kube-controller-manager", self._controller_manager_argv())
            self._start("kube-scheduler", self._scheduler_argv())
            if self.nodes:
                self._start_kwok()
                self._create_nodes()
            self._wait_ready(timeout - (time.monotonic() - started))
        except BaseException:
            self.stop()
            raise
        self._save_state()

    def stop(self) -> None:
        """Stop every process this control plane started (controllers first, etcd last). Idempotent."""
        for controller in reversed(list(self.controllers.values())):
            controller.stop()
        self.controllers.clear()
        for name in reversed(list(self.processes)):
            self.processes.pop(name).stop()
        with contextlib.suppress(FileNotFoundError):
            (self.root / "state.json").unlink()

    def _start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Process:
        process = Process(name, argv, self.root / "logs" / f"{name}.log", env=dict(env or {}))
        if name in self.processes:
            self.processes.pop(name).stop()
        process.start(detached=self.detached)
        self.processes[name] = process
        self._save_state()
        return process

    def _save_state(self) -> None:
        """What ``controlplane.py down`` needs to stop a detached control plane from another process."""
        if not self.root.exists():
            return
        groups = [p.pid for p in self.processes.values() if p.alive()]
        groups += [c.process.pid for c in self.controllers.values() if c.process.alive()]
        _write(self.root / "state.json", json.dumps({"process_groups": groups, "url": self.url,
                                                     "kubeconfig": str(self.kubeconfig)}))

    # ---------------------------------------------------------------------------------------------- PKI

    def _write_pki(self) -> None:
        self.ca = CertificateAuthority()
        _write(self.pki / "ca.crt", self.ca.cert_pem, 0o644)
        _write(self.pki / "ca.key", self.ca.key_pem)
        cert, key = self.ca.issue("kube-apiserver", server=True,
                                  dns=("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
                                       "kubernetes.default.svc.cluster.local"),
                                  ips=("127.0.0.1", "10.0.0.1"))
        _write(self.pki / "apiserver.crt", cert, 0o644)
        _write(self.pki / "apiserver.key", key)
        cert, key = self.ca.issue("kubefusion-admin", organizations=("system:masters",), client=True)
        _write(self.pki / "admin.crt", cert, 0o644)
        _write(self.pki / "admin.key", key)
        private, public = _rsa_key_pair()
        _write(self.pki / "sa.key", private)
        _write(self.pki / "sa.pub", public, 0o644)

    # ------------------------------------------------------------------------------------------- components

    def _start_etcd(self, timeout: float) -> None:
        def attempt() -> None:
            client, peer = free_ports(2)
            data = self.root / "etcd"
            shutil.rmtree(data, ignore_errors=True)
            process = self._start("etcd", [
                self.binary("etcd"), "--name=default", f"--data-dir={data}",
                f"--listen-client-urls=http://127.0.0.1:{client}", f"--advertise-client-urls=http://127.0.0.1:{client}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}", f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster=default=http://127.0.0.1:{peer}",
                # A test cluster lives minutes: durability is not worth an fsync per write on a shared disk.
                "--unsafe-no-fsync", "--log-level=warn", "--quota-backend-bytes=4294967296"])
            self.etcd_url = f"http://127.0.0.1:{client}"
            wait_until(lambda: _http_ok(f"{self.etcd_url}/health"), timeout, "etcd to be healthy",
                       processes=[process])
        _retry_on_port_clash(attempt)

    def _start_apiserver(self, timeout: float) -> None:
        def attempt() -> None:
            (port,) = free_ports(1)
            pki = self.pki
            process = self._start("kube-apiserver", [
                self.binary("kube-apiserver"),
                f"--etcd-servers={self.etcd_url}", f"--etcd-prefix=/registry",
                "--bind-address=127.0.0.1", f"--secure-port={port}", "--advertise-address=127.0.0.1",
                f"--cert-dir={pki}", f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}", f"--client-ca-file={pki / 'ca.crt'}",
                "--authorization-mode=RBAC", "--anonymous-auth=false", "--allow-privileged=true",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                # No kubelet or kube-proxy serves the "kubernetes" Service's loopback endpoint.
                "--endpoint-reconciler-type=none", "--profiling=false", "--v=1",
                *self._audit_flags(),
            ])
            self.url = f"https://127.0.0.1:{port}"
            self._write_admin_kubeconfig()
            wait_until(lambda: self._get("/readyz") == b"ok", timeout, "kube-apiserver to be ready",
                       processes=[process], interval=0.2)
        _retry_on_port_clash(attempt)

    def _audit_flags(self) -> list[str]:
        if not self.audit:
            return []
        # Only ServiceAccounts' requests: the operator's (least privilege is checked on them); the controllers
        # run as admin and would fill the log.
        policy = {"apiVersion": "audit.k8s.io/v1", "kind": "Policy", "omitStages": ["RequestReceived"],
                  "rules": [{"level": "Metadata", "userGroups": ["system:serviceaccounts"]}, {"level": "None"}]}
        path = _write(self.root / "audit-policy.yaml", yaml.safe_dump(policy), 0o644)
        return [f"--audit-policy-file={path}", f"--audit-log-path={self.root / 'audit.log'}",
                "--audit-log-format=json", "--audit-log-mode=blocking"]

    def audit_events(self, user: str | None = None) -> list[dict[str, Any]]:
        """The audit log's events so far (requests of ServiceAccounts), only ``user``'s when given. Each has
        ``verb``, ``objectRef`` (``apiGroup``, ``resource``, ``subresource``, ``namespace``, ``name``),
        ``responseStatus.code`` and ``user.username``."""
        path = self.root / "audit.log"
        if not path.exists():
            return []
        events = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return [e for e in events if user is None or e.get("user", {}).get("username") == user]

    def _controller_manager_argv(self) -> list[str]:
        (port,) = free_ports(1)
        return [self.binary("kube-controller-manager"), f"--kubeconfig={self.kubeconfig}",
                f"--authentication-kubeconfig={self.kubeconfig}", f"--authorization-kubeconfig={self.kubeconfig}",
                "--bind-address=127.0.0.1", f"--secure-port={port}", "--leader-elect=false",
                f"--service-account-private-key-file={self.pki / 'sa.key'}",
                f"--root-ca-file={self.pki / 'ca.crt'}", f"--cluster-cidr={POD_CIDR}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                # One shared API server for a whole test session: the controllers must not lag behind it.
                "--kube-api-qps=200", "--kube-api-burst=400", "--concurrent-gc-syncs=10",
                # A claim made a moment before its volume is seen waits for this period to be bound (15 s).
                "--pvclaimbinder-sync-period=1s", "--v=1"]

    def _scheduler_argv(self) -> list[str]:
        (port,) = free_ports(1)
        return [self.binary("kube-scheduler"), f"--kubeconfig={self.kubeconfig}",
                f"--authentication-kubeconfig={self.kubeconfig}", f"--authorization-kubeconfig={self.kubeconfig}",
                "--bind-address=127.0.0.1", f"--secure-port={port}", "--leader-elect=false",
                "--kube-api-qps=200", "--kube-api-burst=400", "--v=1"]

    def _start_kwok(self) -> None:
        stages = [doc for path in sorted((self.manifests("kwok-stages") / "node" / "fast").glob("node-*.yaml"))
                  for doc in yaml.safe_load_all(path.read_text()) if doc]
        stages += [doc for doc in yaml.safe_load_all(
            (self.manifests("kwok-stages") / "node" / "heartbeat-with-lease" /
             "node-heartbeat-with-lease.yaml").read_text()) if doc]
        stages += [doc for doc in yaml.safe_load_all((HERE / "kwok" / "pod-stages.yaml").read_text()) if doc]
        if self.pod_seconds is not None:
            (auto,) = [d for d in yaml.safe_load_all((HERE / "kwok" / "pod-auto-succeed.yaml").read_text()) if d]
            auto["spec"]["delay"]["durationMilliseconds"] = int(self.pod_seconds * 1000)
            stages.append(auto)
        config = self.root / "kwok" / "kwok.yaml"
        _write(config, yaml.safe_dump_all(stages), 0o644)
        (port,) = free_ports(1)
        # HOME: kwok also reads ~/.kwok/kwok.yaml when it exists; this cluster's stages must be the only ones.
        self._start("kwok", [
            self.binary("kwok"), f"--kubeconfig={self.kubeconfig}", f"--config={config}",
            "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node={self.node_annotation}",
            f"--cidr={POD_CIDR}", f"--node-ip={NODE_IP}", "--node-lease-duration-seconds=40",
            f"--server-address=127.0.0.1:{port}"], env={"HOME": str(self.root / "kwok")})

    def node_body(self, name: str) -> dict[str, Any]:
        capacity = {"cpu": "64", "memory": "512Gi", "pods": "110", "ephemeral-storage": "1Ti",
                    GPU: str(self.gpus_per_node)}
        return {
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "annotations": {"kwok.x-k8s.io/node": self.node_annotation},
                         "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                                    "kubernetes.io/arch": "amd64", "type": "kwok",
                                    "nvidia.com/gpu.present": "true", "nvidia.com/gpu.product": GPU_PRODUCT,
                                    "nvidia.com/gpu.count": str(self.gpus_per_node)}},
            "status": {"capacity": capacity, "allocatable": capacity},
        }

    def _create_nodes(self) -> None:
        docs = [self.node_body(f"{self.node_prefix}-{i}") for i in range(self.nodes)]
        self.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))

    def _wait_ready(self, timeout: float) -> None:
        def nodes_ready() -> bool:
            nodes = json.loads(self.kubectl("get", "nodes", "-o", "json").stdout)["items"]
            ready = [n for n in nodes if n["metadata"]["name"].startswith(f"{self.node_prefix}-") and any(
                c["type"] == "Ready" and c["status"] == "True" for c in n.get("status", {}).get("conditions", []))]
            return len(ready) == self.nodes
        wait_until(nodes_ready, timeout, f"{self.nodes} kwok nodes to be Ready",
                   processes=list(self.processes.values()), interval=0.2)
        # Pods need their namespace's "default" ServiceAccount, which the controller manager makes.
        wait_until(lambda: self.kubectl("get", "serviceaccount", "default", "-n", "default", check=False)
                   .returncode == 0, timeout, "the default ServiceAccount", processes=list(self.processes.values()))

    # ---------------------------------------------------------------------------------------- client side

    def _write_admin_kubeconfig(self) -> None:
        _write(self.kubeconfig, yaml.safe_dump(self.kubeconfig_body(
            "kubefusion-admin", {"client-certificate-data": _b64((self.pki / "admin.crt").read_bytes()),
                                 "client-key-data": _b64((self.pki / "admin.key").read_bytes())})))

    def kubeconfig_body(self, user: str, credentials: dict[str, str], namespace: str | None = None) -> dict[str, Any]:
        context: dict[str, Any] = {"cluster": "kubefusion-test", "user": user}
        if namespace:
            context["namespace"] = namespace
        return {
            "apiVersion": "v1", "kind": "Config", "current-context": "kubefusion-test",
            "clusters": [{"name": "kubefusion-test", "cluster": self._cluster_entry()}],
            "users": [{"name": user, "user": credentials}],
            "contexts": [{"name": "kubefusion-test", "context": context}],
        }

    def _cluster_entry(self) -> dict[str, Any]:
        return {"server": self.url, "certificate-authority-data": _b64((self.pki / "ca.crt").read_bytes())}

    def _ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        context.load_cert_chain(str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
        return context

    def _get(self, path: str) -> bytes:
        with urllib.request.urlopen(self.url + path, context=self._ssl_context(), timeout=5) as response:
            return response.read()

    def version(self) -> dict[str, str]:
        """The API server's ``/version``."""
        return json.loads(self._get("/version"))

    def kubectl(self, *args: str, kubeconfig: Path | None = None, input: str | None = None, check: bool = True,
                timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run the control plane's own kubectl (admin unless ``kubeconfig`` says otherwise)."""
        # A discovery cache of its own: the default one under ~/.kube is shared by every cluster that ever had
        # this port, and would be stale.
        result = subprocess.run([self.binary("kubectl"), f"--kubeconfig={kubeconfig or self.kubeconfig}",
                                 f"--cache-dir={self.root / 'kube-cache'}", *args],
                                input=input, capture_output=True, text=True, timeout=timeout,
                                env={**os.environ, "KUBECTL_KUBERC": "false"})
        if check and result.returncode != 0:
            raise KubectlError(result.returncode, result.args, result.stdout, result.stderr)
        return result

    def apply(self, *documents: dict[str, Any], server_side: bool = True) -> None:
        """``kubectl apply`` of ``documents`` (server-side: CRDs of several MB exceed the client-side apply's
        last-applied annotation)."""
        args = ["apply", "-f", "-"] + (["--server-side", "--force-conflicts"] if server_side else [])
        self.kubectl(*args, input=yaml.safe_dump_all(documents))

    def wait_established(self, crd: str, timeout: float = 60) -> None:
        """Wait until CustomResourceDefinition ``crd`` is served (``kubectl wait`` fails on a CRD whose status
        the API server has not written yet, so this polls)."""
        jsonpath = '{.status.conditions[?(@.type=="Established")].status}'
        wait_until(lambda: self.kubectl("get", "crd", crd, "-o", f"jsonpath={jsonpath}", check=False).stdout == "True",
                   timeout, f"CRD {crd} to be established")
        # Established comes a moment before discovery lists the resource, which kubectl needs to resolve it.
        wait_until(lambda: self.kubectl("get", crd, "-A", "-o", "name", check=False).returncode == 0, timeout,
                   f"discovery to serve {crd}")

    def api_client(self, kubeconfig: Path | None = None) -> Any:
        """An official-client ``ApiClient`` (admin unless ``kubeconfig`` says otherwise); close it when done."""
        import kubernetes
        configuration = kubernetes.client.Configuration()
        kubernetes.config.load_kube_config(config_file=str(kubeconfig or self.kubeconfig),
                                           client_configuration=configuration)
        return kubernetes.client.ApiClient(configuration)

    def service_account_kubeconfig(self, namespace: str, name: str, path: Path, *,
                                   seconds: int = 3600 * 6) -> Path:
        """A kubeconfig that authenticates as ServiceAccount ``namespace/name`` with a token from the
        TokenRequest API, as a pod of that ServiceAccount would (nothing more than its RBAC allows)."""
        request = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                   "spec": {"expirationSeconds": seconds}}
        out = self.kubectl("create", "--raw", f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
                           "-f", "-", input=json.dumps(request)).stdout
        token = json.loads(out)["status"]["token"]
        return _write(path, yaml.safe_dump(self.kubeconfig_body(f"system:serviceaccount:{namespace}:{name}",
                                                                {"token": token}, namespace)))

    def provide_claims(self, namespace: str, *claims: str, access_mode: str = "ReadWriteMany") -> None:
        """PersistentVolumeClaims bound to PersistentVolumes made for them (hostPath volumes nothing mounts:
        kwok runs no containers), so pods that mount them can be scheduled."""
        docs: list[dict[str, Any]] = []
        for claim in claims:
            volume = f"{namespace}-{claim}"
            docs.append({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": volume},
                         "spec": {"capacity": {"storage": "100Gi"}, "accessModes": [access_mode],
                                  "storageClassName": "", "persistentVolumeReclaimPolicy": "Retain",
                                  "hostPath": {"path": f"/kubefusion-test/{volume}"},
                                  "claimRef": {"namespace": namespace, "name": claim}}})
            docs.append({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                         "metadata": {"name": claim, "namespace": namespace},
                         "spec": {"accessModes": [access_mode], "storageClassName": "", "volumeName": volume,
                                  "resources": {"requests": {"storage": "100Gi"}}}})
        self.apply(*docs, server_side=False)
        for claim in claims:
            wait_until(lambda claim=claim: self.kubectl(
                "get", "pvc", claim, "-n", namespace, "-o", "jsonpath={.status.phase}").stdout == "Bound",
                60, f"PVC {namespace}/{claim} to be bound")

    def end_pod(self, namespace: str, pod: str, exit_code: int = 0) -> None:
        """Make every container of ``pod`` exit with ``exit_code`` (kwok's stages do the rest)."""
        self.kubectl("annotate", "pod", pod, "-n", namespace, "--overwrite", f"{EXIT_CODE_ANNOTATION}={exit_code}")

    # ------------------------------------------------------------------------------ controllers with webhooks

    def serving_cert(self, folder: Path, *, cert_name: str = "tls.crt", key_name: str = "tls.key",
                     dns: Iterable[str] = (), ca: CertificateAuthority | None = None) -> Path:
        """A serving certificate for 127.0.0.1 (and ``dns``) issued by ``ca`` (default: this control plane's CA),
        written as ``folder/tls.crt``, ``folder/tls.key`` and ``folder/ca.crt``; returns ``folder``."""
        ca = ca or self.ca
        assert ca is not None, "start() first"
        cert, key = ca.issue("webhook", server=True, dns=("localhost", *dns), ips=("127.0.0.1",))
        _write(folder / cert_name, cert, 0o644)
        _write(folder / key_name, key)
        _write(folder / "ca.crt", ca.cert_pem, 0o644)
        return folder

    def loopback_webhooks(self, documents: Iterable[dict[str, Any]], port: int,
                          ca: CertificateAuthority | None = None) -> list[dict[str, Any]]:
        """``documents`` with every ``(Mutating|Validating)WebhookConfiguration`` and every CRD conversion
        webhook pointed at ``https://127.0.0.1:<port><path>`` with ``ca`` (default: this control plane's CA) as
        ``caBundle`` (a ``service:`` reference cannot reach a process outside the cluster). Other documents are
        returned unchanged."""
        ca = ca or self.ca
        assert ca is not None, "start() first"
        bundle = _b64(ca.cert_pem)

        def point(client_config: dict[str, Any]) -> dict[str, Any]:
            service = client_config.get("service") or {}
            path = service.get("path", "")
            return {"url": f"https://127.0.0.1:{port}{path}", "caBundle": bundle}

        out = []
        for doc in documents:
            doc = copy.deepcopy(doc)
            if doc.get("kind") in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
                for hook in doc.get("webhooks") or []:
                    hook["clientConfig"] = point(hook.get("clientConfig") or {})
            elif doc.get("kind") == "CustomResourceDefinition":
                conversion = (doc.get("spec") or {}).get("conversion") or {}
                if conversion.get("strategy") == "Webhook":
                    conversion["webhook"]["clientConfig"] = point(conversion["webhook"].get("clientConfig") or {})
            out.append(doc)
        return out

    def start_controller(self, name: str, argv: list[str], *, webhooks: Iterable[dict[str, Any]] = (),
                         env: dict[str, str] | None = None, cert_dir: Path | None = None,
                         ca: CertificateAuthority | None = None, ready: Callable[[], bool] | None = None,
                         config: str | None = None, timeout: float = 120) -> Controller:
        """Start a controller-runtime manager (or any controller) against this control plane as admin.

        ``argv`` may use ``{kubeconfig}``, ``{webhook_port}``, ``{cert_dir}``, ``{metrics_port}`` and
        ``{probe_port}``: free loopback ports and this control plane's files. With ``webhooks`` (its
        Mutating/ValidatingWebhookConfigurations, CRDs with conversion webhooks), a serving certificate for
        127.0.0.1 is written to ``cert_dir`` (tls.crt, tls.key, ca.crt; default ``<root>/<name>/certs``) and the
        configurations are applied pointing at the webhook port; controller-runtime reads that folder with
        ``--cert-dir``-like settings or ``webhook.certDir`` in its config file, which the caller passes.
        ``ready``: returns True once it serves (default: its webhook port accepts TLS, or, without webhooks,
        it is alive after a second). ``ca``: the CA that signs the serving certificate and goes into the
        ``caBundle`` (default: this control plane's), for controllers that check their certificates' issuer.
        ``config``: the text of a configuration file (controllers that take their webhook port and certificate
        folder from one), with the same placeholders; written to ``<root>/<name>/config.yaml``, which ``argv``
        names as ``{config}``.
        Returns the :class:`Controller`; :meth:`stop` stops it too.
        """
        webhook_port, metrics_port, probe_port = free_ports(3)
        webhooks = list(webhooks)
        folder = self.root / name
        cert_dir = cert_dir or folder / "certs"
        if webhooks and not (cert_dir / "tls.crt").exists():
            self.serving_cert(cert_dir, ca=ca)
        values = {"kubeconfig": str(self.kubeconfig), "webhook_port": webhook_port, "cert_dir": str(cert_dir),
                  "metrics_port": metrics_port, "probe_port": probe_port, "config": str(folder / "config.yaml")}
        process = Process(name, [a.format(**values) for a in argv], self.root / "logs" / f"{name}.log",
                          env={"KUBECONFIG": str(self.kubeconfig), **(env or {})}, cwd=folder)
        folder.mkdir(parents=True, exist_ok=True)
        if config is not None:
            _write(folder / "config.yaml", config.format(**values), 0o644)
        if name in self.controllers:
            self.controllers.pop(name).stop()
        # Configurations first: a controller that manages its own certificates looks for them when it starts.
        rewritten = self.loopback_webhooks(webhooks, webhook_port, ca) if webhooks else []
        if rewritten:
            self.apply(*rewritten)
        process.start(detached=self.detached)
        controller = Controller(name, process, webhook_port if webhooks else None, cert_dir if webhooks else None,
                                [f"{d['kind'].lower()}/{d['metadata']['name']}" for d in rewritten
                                 if d["kind"].endswith("WebhookConfiguration")])
        self.controllers[name] = controller
        self._save_state()
        check = ready or ((lambda: _tls_accepts(webhook_port)) if webhooks else (lambda: True))
        wait_until(check, timeout, f"{name} to serve", processes=[process], interval=0.2)
        return controller

    def install_training_operator(self) -> Controller:
        """Kubeflow's training operator v1 (PyTorchJob only), its CRD and its validating webhook.

        Its cert-controller keeps CA and serving certificate in Secret ``kubeflow/training-operator-webhook-cert``
        and waits for ``/tmp/k8s-webhook-server/serving-certs/tls.crt`` (where a Deployment mounts that Secret),
        while its webhook server reads ``$TMPDIR/k8s-webhook-server/serving-certs``. So the Secret is made from a
        CA of the name and lifetime the rotator accepts (it would otherwise replace CA and caBundle with its own,
        which the server would not present), the serving certificate goes into a private TMPDIR, and the path
        it waits for gets a copy of the same certificate.
        """
        crds = self.manifests("training-operator") / "crds"
        self.apply(*_documents(crds / "kubeflow.org_pytorchjobs.yaml"))
        self.wait_established("pytorchjobs.kubeflow.org")
        self.kubectl("create", "namespace", TRAINING_OPERATOR_NAMESPACE, check=False)
        dns = f"training-operator.{TRAINING_OPERATOR_NAMESPACE}.svc"
        tmp = self.root / "training-operator" / "tmp"
        # checked 90 days ahead, for its own name, its key parsed as PKCS#1
        ca = CertificateAuthority("training-operator-ca", days=3650, rsa=True)
        cert_dir = self.serving_cert(tmp / "k8s-webhook-server" / "serving-certs", dns=(dns,), ca=ca)
        self.apply({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                    "metadata": {"name": "training-operator-webhook-cert", "namespace": TRAINING_OPERATOR_NAMESPACE},
                    "data": {"ca.crt": _b64(ca.cert_pem), "ca.key": _b64(ca.key_pem),
                             "tls.crt": _b64((cert_dir / "tls.crt").read_bytes()),
                             "tls.key": _b64((cert_dir / "tls.key").read_bytes())}})
        shared = Path("/tmp/k8s-webhook-server/serving-certs/tls.crt")
        if not shared.exists():
            with contextlib.suppress(OSError):
                _write(shared, (cert_dir / "tls.crt").read_bytes(), 0o644)
        webhook = _documents(self.manifests("training-operator") / "webhook" / "manifests.yaml")
        for doc in webhook:  # the name its rotator looks for (kustomize's patch.yaml renames it in upstream)
            doc["metadata"]["name"] = "validator.training-operator.kubeflow.org"
        return self.start_controller(
            "training-operator",
            [self.binary("training-operator"), "--enable-scheme=pytorchjob", "--webhook-server-port={webhook_port}",
             "--metrics-bind-address=127.0.0.1:{metrics_port}", "--health-probe-bind-address=127.0.0.1:{probe_port}",
             "--kube-api-qps=200", "--kube-api-burst=400", "--controller-threads=4", "--zap-log-level=info"],
            webhooks=webhook, cert_dir=cert_dir, ca=ca,
            env={"TMPDIR": str(tmp), "MY_POD_NAMESPACE": TRAINING_OPERATOR_NAMESPACE})


class ExternalCluster(ControlPlane):
    """A cluster that runs elsewhere (kind, k3d, a test cluster), given by an admin kubeconfig, in place of the
    local control plane: the same API for the tests, with kwok (run here, against that cluster) adding the fake
    GPU nodes and living the pods' lives on them. Kubeflow's training operator must be installed in the cluster
    already (a process here could not serve its webhook to an API server in a container); there is no audit
    log. ``stop`` removes the fake nodes and stops kwok; everything else the tests made is theirs to remove."""

    external = True

    def __init__(self, kubeconfig: Path, root: Path, *, nodes: int = 4, gpus_per_node: int = 4,
                 build_dir: Path | None = None) -> None:
        super().__init__(root, nodes=nodes, gpus_per_node=gpus_per_node, audit=False, build_dir=build_dir)
        self._kubeconfig = Path(kubeconfig).resolve()
        config = yaml.safe_load(self._kubeconfig.read_text())
        context = next(c["context"] for c in config["contexts"] if c["name"] == config["current-context"])
        self._cluster = next(c["cluster"] for c in config["clusters"] if c["name"] == context["cluster"])
        self.url = self._cluster["server"]
        # Names and an annotation of their own: another kwok (say, a `make cluster` one) leaves them alone.
        self.node_prefix, self.node_annotation = "kubefusion-test-gpu", "kubefusion-test"

    @property
    def kubeconfig(self) -> Path:
        return self._kubeconfig

    def start(self, timeout: float = 120) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if not self._atexit:
            atexit.register(self.stop)
            self._atexit = True
        try:
            self.kubectl("version")  # reachable, and the kubeconfig works
            self._start_kwok()
            self._create_nodes()
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.processes.get("kwok") is not None and self.nodes:
            names = [f"{self.node_prefix}-{i}" for i in range(self.nodes)]
            self.kubectl("delete", "node", *names, "--ignore-not-found", "--wait=false", check=False)
        super().stop()

    def _cluster_entry(self) -> dict[str, Any]:
        return dict(self._cluster)

    def version(self) -> dict[str, str]:
        return json.loads(self.kubectl("get", "--raw", "/version").stdout)

    def install_training_operator(self) -> Controller | None:
        """Checks that Kubeflow's training operator is installed; says how to install it where it is not."""
        if self.kubectl("get", "crd", "pytorchjobs.kubeflow.org", check=False).returncode != 0:
            raise RuntimeError(
                "Kubeflow's training operator is not installed in the cluster of KUBEFUSION_TEST_KUBECONFIG: "
                "kubectl apply --server-side -k \"github.com/kubeflow/training-operator.git/manifests/overlays/"
                "standalone?ref=v1.9.2\"")
        return None

    def audit_events(self, user: str | None = None) -> list[dict[str, Any]]:
        raise NotImplementedError("an external cluster's audit log is not readable from here")


class KubectlError(subprocess.CalledProcessError):
    """A kubectl that failed, with what it said."""

    def __str__(self) -> str:
        return f"kubectl {' '.join(self.cmd[2:])}: {(self.stderr or self.stdout or '').strip()}"


def _documents(path: Path) -> list[dict[str, Any]]:
    """The YAML documents of ``path`` (empty ones left out)."""
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _tls_accepts(port: int) -> bool:
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as raw, context.wrap_socket(raw):
            return True
    except OSError:
        return False


def _retry_on_port_clash(attempt: Callable[[], None], tries: int = 3) -> None:
    """Free ports are picked, then bound by another process: on this shared machine another program can take
    one in between. Such a start fails quickly with "address already in use"; try again on new ports."""
    for left in range(tries - 1, -1, -1):
        try:
            attempt()
            return
        except RuntimeError as err:
            if left == 0 or "address already in use" not in str(err):
                raise


# ------------------------------------------------------------------------------------------- command line


def stop_detached(root: Path, timeout: float = 15) -> bool:
    """Stop the control plane a ``controlplane.py up`` left running under ``root``; False if none was."""
    state = root / "state.json"
    if not state.exists():
        return False
    for pgid in reversed(json.loads(state.read_text())["process_groups"]):
        _stop_group(pgid, timeout)
    state.unlink()
    return True


def _install_chart_and_operator(cp: ControlPlane, namespace: str) -> dict[str, str]:
    """The kubefusion chart (helm), namespace ml-team with the claims and PriorityClass examples/job.yaml needs,
    and the operator running out of cluster as the chart's ServiceAccount (a TokenRequest token) with the chart
    Deployment's settings; its endpoints on free loopback ports, which are returned."""
    helm = shutil.which("helm", path=str(REPO / ".tools" / "bin")) or shutil.which("helm")
    if helm is None:
        raise RuntimeError("helm is missing: run `make tools`")
    subprocess.run([helm, "install", "kubefusion", str(REPO / "charts" / "kubefusion"), "--namespace", namespace,
                    "--create-namespace", "--kubeconfig", str(cp.kubeconfig)], check=True, capture_output=True,
                   text=True)
    cp.wait_established("multimodaltrainjobs.kubefusion.io")
    # The chart's Deployment would put the operator's pod on a kwok node, where nothing runs.
    cp.kubectl("-n", namespace, "scale", "deployment", "--all", "--replicas=0")
    deployment = json.loads(cp.kubectl("-n", namespace, "get", "deployment", "-o", "json").stdout)["items"][0]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
    cp.apply({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": "high"},
              "value": 100000, "description": "examples/job.yaml asks for it"})
    cp.kubectl("create", "namespace", "ml-team", check=False)
    cp.provide_claims("ml-team", "datasets", "products-runs")
    token = cp.service_account_kubeconfig(namespace, "kubefusion-operator", cp.root / "operator.kubeconfig")
    metrics, liveness, progress = free_ports(3)
    script = shutil.which("kubefusion-operator", path=str(REPO / ".venv" / "bin")) or "kubefusion-operator"
    cp._start("kubefusion-operator", [
        script, f"--liveness=http://127.0.0.1:{liveness}/healthz", f"--metrics-port={metrics}",
        "--metrics-address=127.0.0.1", f"--progress-port={progress}", "--progress-address=127.0.0.1"],
        env={**env, "KUBECONFIG": str(token)})
    wait_until(lambda: _http_ok(f"http://127.0.0.1:{liveness}/healthz"), 60, "the operator to be healthy",
               processes=[cp.processes["kubefusion-operator"]])
    return {"metrics": f"http://127.0.0.1:{metrics}/metrics", "log": str(cp.root / "logs" / "kubefusion-operator.log")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The test control plane for people (make cluster).")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start it detached with the CRD, chart, training operator and operator")
    up.add_argument("root", type=Path)
    up.add_argument("--pod-seconds", type=float, default=20, help="a pod succeeds after this long (default 20)")
    up.add_argument("--nodes", type=int, default=4, help="fake GPU nodes (0: none, and no kwok)")
    up.add_argument("--without-kubefusion", action="store_true",
                    help="only Kubernetes and Kubeflow's training operator: no chart, no kubefusion operator (a "
                         "cluster to point KUBEFUSION_TEST_KUBECONFIG at, as at kind)")
    down = sub.add_parser("down", help="stop what `up` started and remove its folder")
    down.add_argument("root", type=Path)
    args = parser.parse_args(argv)
    root = args.root.resolve()
    if args.command == "down":
        stopped = stop_detached(root)
        shutil.rmtree(root, ignore_errors=True)
        print("control plane stopped" if stopped else f"no control plane was running under {root}")
        return 0
    if stop_detached(root):
        print("stopped the control plane that was running there")
    shutil.rmtree(root, ignore_errors=True)
    cp = ControlPlane(root, nodes=args.nodes, pod_seconds=args.pod_seconds, detached=True)
    try:
        cp.start()
        cp.install_training_operator()
        operator = None if args.without_kubefusion else _install_chart_and_operator(cp, "kubefusion-system")
    except (RuntimeError, TimeoutError, subprocess.CalledProcessError) as err:
        detail = getattr(err, "stderr", "") or ""
        print(f"controlplane.py: {err}{': ' + detail.strip() if detail else ''}", file=sys.stderr)
        cp.stop()
        return 1
    version = cp.version()["gitVersion"]
    print(f"Kubernetes {version} on {cp.url}: {cp.nodes} kwok nodes with {cp.gpus_per_node} {GPU} each and Kubeflow's "
          "training operator" + ("." if operator is None else
                                 f", the kubefusion chart, and kubefusion-operator running here as the chart's "
                                 f"ServiceAccount (metrics {operator['metrics']}, log {operator['log']})."))
    if operator is not None:
        print(f"Pods succeed {args.pod_seconds:g} s after they start; `kubectl annotate pod NAME "
              f"{EXIT_CODE_ANNOTATION}=1` fails one. Logs of every component: {root / 'logs'}.")
        print("  kubectl apply -f examples/job.yaml && kubectl get mmtj -n ml-team -w      # make cluster-down stops it")
    print(f"export PATH={cp.build / 'bin'}:$PATH   # kubectl {version}")
    print(f"export KUBECONFIG={cp.kubeconfig}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
