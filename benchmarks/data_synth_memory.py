"""Peak memory of ``kubefusion data synth`` against the sample count: does streaming keep it flat?

    .venv/bin/python benchmarks/data_synth_memory.py [--samples 11000 22000] [--image-size 32]
        [--ood-fraction 0.2] [--rounds 2] [--json]

Each count runs in its own fresh process (``synthesize`` into a temporary folder) that reports its peak
resident set (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) and wall time; the counts alternate over the
rounds. The baseline is the smallest count in the same run: a row per larger count gives the ratio of the
peaks (goal: at most 1.1), the growth, and, for scale, the raw pixels a generator that kept its images in
memory would hold.

Generation works in chunks of up to 2048 records per split (fewer for large images), so the peak rises until
both splits fill a chunk (in-distribution at 2048 samples; the OOD split, at the default ``--ood-fraction 0.2``,
at 10 240) and is flat from there on: the default counts are both past that point.
``tests/integration/test_data_synth_memory.py`` runs this script with small counts.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile

from harness import Goal, Row, describe, emit, interleave, log, paired, parser

COMMAND = ".venv/bin/python benchmarks/data_synth_memory.py"

CHILD = """
import json, resource, sys, time
from kubefusion.data.synth import synthesize
samples, image_size, ood_fraction, out = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
started = time.perf_counter()
synthesize(out, samples=samples, seed=0, image_size=image_size, ood_fraction=ood_fraction, progress=False)
seconds = time.perf_counter() - started
print(json.dumps({"samples": samples, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "seconds": seconds}))
"""


def measure(samples: int, image_size: int, ood_fraction: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="synth-memory-") as tmp:
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
        done = subprocess.run([sys.executable, "-c", CHILD, str(samples), str(image_size), str(ood_fraction),
                               os.path.join(tmp, "d")],
                              capture_output=True, text=True, env=env, check=True)
        return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> list[Row]:
    p = parser(__doc__)
    p.add_argument("--samples", type=int, nargs="+", default=[11000, 22000],
                   help="sample counts; the smallest is the baseline")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--ood-fraction", type=float, default=0.2)
    args = p.parse_args(argv)
    counts = [200, 400] if args.smoke else sorted(args.samples)
    rounds = args.rounds or (1 if args.smoke else 2)
    base_count, larger = counts[0], counts[1:]
    if not larger:
        p.error("--samples needs two counts or more: the smallest is the baseline")
    log(f"data_synth_memory: {counts} samples at {args.image_size} px, {rounds} rounds, a fresh process each")
    runs = interleave({n: (lambda n=n: measure(n, args.image_size, args.ood_fraction)["peak_mb"]) for n in counts},
                      rounds=rounds, progress=log)
    rows = []
    for n in larger:
        growth = statistics.median(runs[n]) - statistics.median(runs[base_count])
        # in-distribution + OOD images as uint8 pixels: what holding them all would take
        extra_images_mb = (n - base_count) * (1 + args.ood_fraction) * args.image_size ** 2 * 3 / 2 ** 20
        rows.append(Row(
            measured=f"peak resident memory of kubefusion data synth, {n} samples at {args.image_size} px "
                     f"(OOD fraction {args.ood_fraction}), a fresh process each",
            value=f"{describe(runs[n], 'MB', 1)}",
            baseline=f"the same at {base_count} samples: {describe(runs[base_count], 'MB', 1)}",
            ratio=paired(runs[n], runs[base_count]), ratio_of=f"peak at {n} / peak at {base_count}",
            goal=Goal("<=", 1.1), command=COMMAND,
            note=f"Growth {growth:+.1f} MB for {n - base_count} more samples; keeping their images in memory "
                 f"would take {extra_images_mb:.0f} MB more.",
            if_missed="generation must stream in chunks; see the module docstring.",
            details={"growth_mb": growth, "extra_images_in_memory_mb": extra_images_mb,
                     "peak_mb": {str(k): v for k, v in runs.items()}}))
    emit(rows, args)
    return rows


if __name__ == "__main__":
    main()
