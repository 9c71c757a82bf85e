"""Peak memory of ``kubefusion data synth`` against the sample count: does streaming keep it flat?

    .venv/bin/python benchmarks/data_synth_memory.py [--samples 2000 20000 60000] [--image-size 32]
        [--ood-fraction 0.2] [--json]

Each count runs in its own fresh process (``synthesize`` into a temporary folder) that reports its peak
resident set (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) and wall time. The baseline is the smallest count
in the same run: printed are each run's peak, its growth over the baseline, the growth per 1 000 extra samples,
and, for scale, the raw pixels a generator that kept its images in memory would hold at that count.

Generation works in chunks of up to 2048 records per split (fewer for large images), so the peak rises until
both splits fill a chunk (in-distribution at 2048 samples; the OOD split, at the default ``--ood-fraction 0.2``,
at 10 240) and is flat from there on.
``tests/integration/test_data_synth_memory.py`` runs this script with small counts.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

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


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, nargs="+", default=[2000, 20000, 60000])
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--ood-fraction", type=float, default=0.2)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)
    counts = sorted(args.samples)
    runs = [measure(n, args.image_size, args.ood_fraction) for n in counts]
    base = runs[0]
    for run in runs:
        extra = run["samples"] - base["samples"]
        run["growth_mb"] = run["peak_mb"] - base["peak_mb"]
        run["growth_mb_per_1000"] = run["growth_mb"] / extra * 1000 if extra else 0.0
        # in-distribution + OOD images as uint8 pixels: what holding them all would take
        images = run["samples"] * (1 + args.ood_fraction)
        run["images_in_memory_mb"] = images * args.image_size ** 2 * 3 / 2 ** 20
    result = {"image_size": args.image_size, "ood_fraction": args.ood_fraction, "cpus": os.cpu_count(),
              "runs": runs}
    if args.json:
        print(json.dumps(result))
        return result
    print(f"kubefusion data synth, {args.image_size}px images, OOD fraction {args.ood_fraction}, "
          f"{os.cpu_count()} CPUs; baseline: "
          f"{base['samples']} samples in the same run")
    for run in runs:
        print(f"{run['samples']:>8} samples: peak {run['peak_mb']:7.1f} MB, growth {run['growth_mb']:+6.1f} MB "
              f"({run['growth_mb_per_1000']:+.2f} MB per 1000 samples; all images in memory would be "
              f"{run['images_in_memory_mb']:.0f} MB), {run['seconds']:.1f} s")
    return result


if __name__ == "__main__":
    main()
