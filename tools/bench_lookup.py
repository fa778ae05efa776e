"""Lookup benchmark: the store against np.take and a raw LMDB loop (see docs/BENCHMARKS.md).

    python tools/bench_lookup.py            # 2M rows x 128 fp16, the recorded configuration
    python tools/bench_lookup.py --rows 500000

Same as ``tierstore bench``, with the recorded configuration as its default.
"""
import sys

from tierstore.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    if not any(a.startswith("--rows") for a in args):
        args = ["--rows", "2000000"] + args
    sys.exit(main(["bench"] + args))
