"""``kubefusion preprocess --config job.yaml --out ARTIFACTS``: the init container's command.

Computes the content key (data files whose size and mtime are unchanged since the last run take their
digest from ``ARTIFACTS/.fingerprints/``; ``--rehash`` reads them all), reuses ``ARTIFACTS/<key>/`` when it
exists and verifies (seconds, no TensorFlow import; one that fails verification is moved aside), else exports the preprocessing graph (SavedModel + ONNX + tokenizer + manifest) and publishes it atomically.
Safe to run in every pod at once. Prints the artifact folder; ``--json`` prints a summary instead.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, type=Path, help="MultimodalTrainJob YAML file")
    parser.add_argument("--out", required=True, type=Path, help="ARTIFACTS folder (shared by all pods)")
    parser.add_argument("--data", type=str, default=None,
                        help="dataset folder or URI to use instead of spec.data.path (e.g. a local copy)")
    parser.add_argument("--rehash", action="store_true",
                        help="read every data file for the content key, even those whose size and mtime match "
                             "the digest cache (ARTIFACTS/.fingerprints/); for a file rewritten in place with "
                             "both unchanged")
    parser.add_argument("--json", action="store_true", help="print a JSON summary")


def run(args: argparse.Namespace) -> int:
    from kubefusion.config import load_job_file
    from kubefusion.preprocess.export import prepare

    job = load_job_file(args.config)
    # The init container is the first thing a cluster job runs: a missing backbone fails here, in a second,
    # not after the data scan, the export and GPU scheduling.
    from kubefusion.model import check_model_sources

    check_model_sources(job.model)
    from kubefusion.data.location import data_flag

    result = prepare(job, args.out, data_root=data_flag(args.data), rehash=args.rehash)
    if args.json:
        print(json.dumps({"artifact": str(result.artifact_dir), "content_key": result.content_key,
                          "reused": result.reused, "seconds": round(result.seconds, 3)}))
    else:
        print(result.artifact_dir)
    return 0
