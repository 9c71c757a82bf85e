"""``kubefusion data validate DIR``: read, join and count a dataset exactly as training would (same scan, same
policies), without training. Imports TensorFlow (for tf.io.gfile and image decoding), never torch.

Output: a table (counts per modality, joined records, missing per modality, bad records by reason with the first
example of each, class balance), or with ``--json`` one JSON object: the scan report
(:meth:`~kubefusion.data.records.ScanReport.to_dict`: keys ``joined``, ``missing``, ``bad``, ``class_balance``,
...) plus ``ok``, ``ood`` (the same report for the OOD folder, or null) and ``suggested_preset``
(``small_pretrained`` below :data:`SMALL_DATASET` joined records, else null; the table prints it as a hint).

The OOD folder (``--ood``, default ``DIR/ood`` when it exists) is validated too, with the classes of ``DIR``
(a label there outside them is a bad record), and reported separately; ``--no-ood`` skips it.

Exit status: 0 when records join; 1 when nothing joins (in ``DIR`` or in the OOD folder); 2 when the scan stops
at a bad record under ``--on-bad-record fail`` (the default), with the error (file, line or id, reason) on
stderr and, with ``--json``, ``{"ok": false, "error": ...}`` on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from kubefusion.config import MODALITIES, DataConfig
from kubefusion.data.location import Spelling, dataset_location
from kubefusion.errors import DataError

FLAGS = Spelling(on_bad_record="--on-bad-record", missing_modality="--missing", manifest="--manifest")

SMALL_DATASET = 20_000
"""Below this many joined records, encoders trained from scratch have too little to learn from: validate
suggests the pretrained own-data preset."""
SMALL_DATASET_HINT = ("hint: {n} records is little to train encoders from scratch on; start from "
                      "examples/own-data-job.yaml (pretrained EfficientNet-Lite0 + MiniLM that load offline, a "
                      "frozen warm-up, unimodal heads; config.small_pretrained()) and set its spec.data.path")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", help="dataset: a folder (local or a URI tf.io.gfile reads) with images/, text.csv and "
                                    "numeric.csv, or a manifest CSV file (its folder is the root)")
    parser.add_argument("--on-bad-record", choices=("fail", "skip"), default="fail",
                        help="fail: stop at the first bad record (default); skip: drop and count them")
    parser.add_argument("--missing", choices=("drop", "keep"), default="drop",
                        help="ids missing a modality: drop (default) or keep with a modality mask")
    parser.add_argument("--manifest", help="manifest CSV (id,image,text,<numeric>,label) instead of the 3 files: a "
                                           "path from here (DIR/manifest.csv), or a name in DIR")
    parser.add_argument("--ood", help="OOD folder to validate as well (default: DIR/ood when it exists)")
    parser.add_argument("--no-ood", action="store_true", help="do not look at an OOD folder")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def run(args: argparse.Namespace) -> int:
    from kubefusion.data import _gfile  # noqa: PLC0415
    from kubefusion.data.reader import scan  # noqa: PLC0415

    try:
        where = dataset_location(args.dir, args.manifest)
        cfg = DataConfig(path=where.root, manifest=where.manifest, on_bad_record=args.on_bad_record,
                         missing_modality=args.missing)
        ood_dir = None if args.no_ood else args.ood or _default_ood(where.root, _gfile)
        main = scan(cfg, where.root, spelling=FLAGS)
        ood = None
        if ood_dir is not None:
            ood = scan(DataConfig(path=str(ood_dir), manifest=where.manifest, on_bad_record=args.on_bad_record,
                                  missing_modality=args.missing), ood_dir, classes=main.classes, spelling=FLAGS)
    except DataError as exc:
        if args.json:
            print(json.dumps({"ok": False, "error": str(exc)}))
        raise
    nothing = [str(r.report.root) for r in (main, ood) if r is not None and r.report.joined == 0]
    small = 0 < main.report.joined < SMALL_DATASET
    summary = {**main.report.to_dict(), "classes": main.classes, "numeric_columns": main.numeric_columns,
               "ok": not nothing, "ood": ood.report.to_dict() if ood is not None else None,
               "suggested_preset": "small_pretrained" if small else None}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(render(main.report.to_dict(), title="dataset"))
        if ood is not None:
            print()
            print(render(ood.report.to_dict(), title="OOD dataset"))
        if small:
            print()
            print(SMALL_DATASET_HINT.format(n=main.report.joined))
    if nothing:
        print(f"error: no record joins in {', '.join(nothing)} (see the counts above)", file=sys.stderr)
        return 1
    return 0


def _default_ood(root: str, gfile: Any) -> str | None:
    candidate = gfile.join(root, "ood")
    return candidate if gfile.isdir(candidate) else None


def render(report: dict[str, Any], *, title: str) -> str:
    """The human-readable table of one scan report."""
    policy = report["policy"]
    lines = [
        f"{title} {report['root']} ({report['layout']} layout; onBadRecord={policy['onBadRecord']}, "
        f"missingModality={policy['missingModality']})",
        "",
        f"  {'modality':<10}{'read':>10}{'missing':>10}",
    ]
    lines += [f"  {m:<10}{report['modalities'][m]:>10}{report['missing'][m]:>10}" for m in MODALITIES]
    lines += [
        "",
        f"  ids {report['ids']}, joined {report['joined']} (complete {report['complete']}), "
        f"dropped for a missing modality {report['dropped_incomplete']}, without a label {report['unlabeled']}"
        + (f", files in images/ that are no id's image {report['ignored_files']}" if report["ignored_files"] else ""),
    ]
    if report["bad_total"]:
        lines += ["", f"  {'bad records':<16}{'count':>7}  first"]
        lines += [f"  {reason:<16}{count:>7}  {report['first_bad'].get(reason, '')}"
                  for reason, count in report["bad"].items() if count]
    else:
        lines += ["  bad records: none"]
    total = max(1, report["joined"])
    lines += ["", f"  {'class':<32}{'records':>9}{'share':>8}"]
    lines += [f"  {name:<32}{count:>9}{100 * count / total:>7.1f}%" for name, count in report["class_balance"].items()]
    return "\n".join(lines)
