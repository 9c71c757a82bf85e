"""``kubefusion-operator``: run the kopf operator, in a cluster (service account) or locally (kubeconfig).

Cluster-wide by default (``--all-namespaces``); ``--namespace`` (repeatable, globs allowed) limits it. Standalone
by default: the Deployment runs one replica with the ``Recreate`` strategy, so no peering objects (and no RBAC
for them) are needed; ``--peering NAME`` enables kopf's peering for several replicas (then the
``kopfpeerings``/``clusterkopfpeerings`` CRDs and RBAC for them must be installed).
"""

from __future__ import annotations

import argparse
import os
import sys

from kubefusion_operator.api import CONCRETE_BACKENDS
from kubefusion_operator.options import ENV_PREFIX, Options


def build_parser(defaults: Options) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubefusion-operator",
        description="Turn MultimodalTrainJobs into Kubeflow PyTorchJobs or TrainJobs and report their state.")
    parser.add_argument("-n", "--namespace", action="append", dest="namespaces", default=None,
                        help="watch only this namespace (repeatable; globs like team-*); default: all namespaces "
                             f"(env {ENV_PREFIX}NAMESPACES, comma-separated)")
    parser.add_argument("--liveness", default=os.environ.get(f"{ENV_PREFIX}LIVENESS", "http://0.0.0.0:8081/healthz"),
                        help="kopf's liveness endpoint (default %(default)s)")
    parser.add_argument("--metrics-port", type=int, default=defaults.metrics_port,
                        help="Prometheus /metrics port (default %(default)s)")
    parser.add_argument("--metrics-address", default=defaults.metrics_address,
                        help="address /metrics binds (default %(default)s)")
    parser.add_argument("--progress-port", type=int, default=defaults.progress_port,
                        help="port trainers post progress reports to (0: none; default %(default)s)")
    parser.add_argument("--progress-address", default=defaults.progress_address,
                        help="address the progress endpoint binds (default %(default)s)")
    parser.add_argument("--progress-url", default=defaults.progress_url,
                        help="base URL the training pods reach the progress endpoint at (env "
                             f"{ENV_PREFIX}PROGRESS_URL; default: none, pods report no progress)")
    parser.add_argument("--peering", default=os.environ.get(f"{ENV_PREFIX}PEERING") or None,
                        help="kopf peering name for several replicas (default: standalone, no peering)")
    parser.add_argument("--priority", type=int, default=0, help="peering priority (with --peering)")
    parser.add_argument("--backend-retry-seconds", type=float, default=defaults.backend_retry_seconds,
                        help="first retry delay while no backend a job may use is installed (default %(default)s)")
    parser.add_argument("--preferred-backend", choices=CONCRETE_BACKENDS, default=defaults.preferred_backend,
                        help="what spec.backend: Auto takes where the cluster serves both PyTorchJob and TrainJob "
                             f"(env {ENV_PREFIX}PREFERRED_BACKEND; default %(default)s)")
    parser.add_argument("--training-runtime", default=defaults.training_runtime,
                        help="the ClusterTrainingRuntime TrainJobs run on (env "
                             f"{ENV_PREFIX}TRAINING_RUNTIME; default %(default)s)")
    parser.add_argument("--resync-seconds", type=float, default=defaults.resync_seconds,
                        help="how often every job is reconciled again (default %(default)s)")
    parser.add_argument("--default-trainer-image", default=defaults.default_trainer_image,
                        help="trainer image for jobs without spec.image (env "
                             f"{ENV_PREFIX}DEFAULT_TRAINER_IMAGE; default: none, such jobs are refused)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every handler step")
    parser.add_argument("--debug", action="store_true", help="log API traffic too")
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        options = Options.from_env()
    except ValueError as e:
        print(f"kubefusion-operator: {e}", file=sys.stderr)
        return 2
    args = build_parser(options).parse_args(argv)
    try:
        options.metrics_port, options.metrics_address = args.metrics_port, args.metrics_address
        options.backend_retry_seconds, options.resync_seconds = args.backend_retry_seconds, args.resync_seconds
        options.default_trainer_image = args.default_trainer_image
        options.progress_port, options.progress_address = args.progress_port, args.progress_address
        options.progress_url = args.progress_url
        options.preferred_backend, options.training_runtime = args.preferred_backend, args.training_runtime
        options.__post_init__()
    except ValueError as e:
        print(f"kubefusion-operator: {e}", file=sys.stderr)
        return 2
    # The handlers module reads its options from the environment when kopf imports it.
    os.environ.update(options.to_env())
    namespaces = args.namespaces or [n.strip() for n in os.environ.get(f"{ENV_PREFIX}NAMESPACES", "").split(",")
                                     if n.strip()]

    import kopf
    import kubernetes

    from kubefusion_operator import kube

    try:
        kube.client()  # the same credentials kopf will find: fail here with one line, not kopf's tracebacks
    except kubernetes.config.ConfigException as e:
        print(f"kubefusion-operator: no Kubernetes credentials: not running in a cluster (service account) and no "
              f"usable kubeconfig ($KUBECONFIG or ~/.kube/config): {e}", file=sys.stderr)
        return 1
    kopf.configure(verbose=args.verbose, debug=args.debug)
    import kubefusion_operator.handlers  # noqa: F401  (registers the handlers with kopf)

    try:
        kopf.run(
            standalone=args.peering is None,
            peering_name=args.peering,
            priority=args.priority,
            clusterwide=not namespaces,
            namespaces=namespaces,
            liveness_endpoint=args.liveness or None,
        )
    except kopf.LoginError as e:  # credentials that loaded above but were rejected or expired since
        print(f"kubefusion-operator: Kubernetes login failed: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
