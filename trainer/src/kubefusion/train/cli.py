"""``kubefusion train --config JOB.yaml --artifacts DIR --output DIR``: the whole training recipe.

Works under torchrun (``torchrun -m kubefusion train ...``, one process per GPU or CPU slot) and as a single
process without any torchrun environment. Restarted with the same ``--output`` it resumes every stage from its
newest valid checkpoint. See :mod:`kubefusion.train.loop` for the exact torchrun command lines.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, type=Path, help="MultimodalTrainJob YAML file")
    parser.add_argument("--artifacts", required=True, type=Path,
                        help="ARTIFACTS folder written by `kubefusion preprocess`")
    parser.add_argument("--output", required=True, type=Path,
                        help="folder for checkpoints, model.pt, TensorBoard logs and results (resumes from it)")
    parser.add_argument("--restart", action="store_true",
                        help="discard the run already in --output (checkpoints, models, results, curves) and start "
                             "over; without it a folder trained with another configuration is refused. Never put it "
                             "in a cluster job's command: every pod restart would start over")
    parser.add_argument("--data", type=str, default=None,
                        help="dataset folder or URI to use instead of spec.data.path (as given to `kubefusion preprocess`)")


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import torch

    from kubefusion.config import load_job_file
    from kubefusion.model import check_model_sources
    from kubefusion.train import distributed
    from kubefusion.train.atomic import make_output_dir
    from kubefusion.train.recipe import run_recipe

    from kubefusion.data.location import data_flag

    job = load_job_file(args.config)
    check_model_sources(job.model)  # before the process group, the artifact and the data scan
    data_flag(args.data)
    make_output_dir(args.output)
    if job.training.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS is only deterministic with it
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    runtime = distributed.setup(job.training.collective_timeout_seconds)
    try:
        run_recipe(job, artifacts=args.artifacts, output=args.output, runtime=runtime, data_dir=args.data,
                   restart=args.restart)
    finally:
        distributed.teardown()
    return 0
