"""The ``tierstore`` command line."""
from __future__ import annotations

import argparse
import json
import sys

from . import api
from .errors import TierstoreError


def _bench(args):
    from .bench import BenchSpec, run

    spec = BenchSpec(rows=args.rows, dim=args.dim, dtype=args.dtype, batch=args.batch,
                     warmup=args.warmup, timed=args.timed, device_share=args.device_share,
                     ram_share=args.ram_share, workdir=args.workdir,
                     codec_rows=min(100_000, args.rows),
                     alphas=tuple(args.alpha), codecs=() if args.no_codecs else BenchSpec.codecs)
    run(spec)
    return 0


def _stat(args):
    with api.open(args.path, readonly=True) as store:
        disk = store._disk
        info = {
            "path": str(store.path),
            "num_rows": store.num_rows,
            "dim": store.dim,
            "dtype": store.dtype.name,
            "codec": store.codec.get_config(),
            "init": disk.meta.init,
            "format_version": disk.meta.version,
            "stored_records": disk.stored_rows(),
            "file_bytes": disk.file_bytes(),
            "used_bytes": disk.used_bytes(),
            "logical_bytes": store.num_rows * store.dim * store.dtype.itemsize,
        }
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        width = max(map(len, info))
        for key, value in info.items():
            print(f"{key:<{width}}  {value}")
    return 0


def _check(args):
    with api.open(args.path, readonly=True) as store:
        report = store.check()
    print(report)
    return 0 if report.ok else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tierstore", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    bench = sub.add_parser("bench", help="create a store from a generated table, run Zipf and "
                           "drifting id streams through it, print hit ratios and throughput")
    bench.add_argument("--rows", type=int, default=1_000_000)
    bench.add_argument("--dim", type=int, default=128)
    bench.add_argument("--dtype", default="float16")
    bench.add_argument("--batch", type=int, default=65536)
    bench.add_argument("--warmup", type=int, default=10, help="warm-up batches per stream")
    bench.add_argument("--timed", type=int, default=20, help="timed batches per stream")
    bench.add_argument("--device-share", type=float, default=0.01)
    bench.add_argument("--ram-share", type=float, default=0.10)
    bench.add_argument("--alpha", type=float, nargs="+", default=[0.8, 1.0, 1.2])
    bench.add_argument("--no-codecs", action="store_true", help="skip the codec size table")
    bench.add_argument("--workdir", help="where to build the store (default: a temporary folder)")
    bench.set_defaults(run=_bench)

    stat = sub.add_parser("stat", help="metadata and sizes of a store")
    stat.add_argument("path")
    stat.add_argument("--json", action="store_true")
    stat.set_defaults(run=_stat)

    check = sub.add_parser("check", help="verify every stored row; exit 1 on damage")
    check.add_argument("path")
    check.set_defaults(run=_check)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (TierstoreError, OSError) as exc:
        print(f"tierstore {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
