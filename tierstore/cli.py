"""The ``tierstore`` command line.

    tierstore profile TRACE [--device-rows N --ram-rows N --target 0.9 --write-counts OUT.npz ...]
    tierstore create PATH --rows N --dim D
    tierstore import SOURCE PATH          # .npy or .safetensors -> a new store
    tierstore export PATH OUT.npy
    tierstore stat PATH | check PATH | bench
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

from . import api
from .errors import ConfigError, TierstoreError
from .progress import progress


def _bench(args):
    from .bench import BenchSpec, run

    if int(args.rows * args.device_share) + int(args.rows * args.ram_share) < 1:
        need = math.ceil(1 / max(args.device_share + args.ram_share, 1e-12))
        raise ConfigError(f"--rows {args.rows} leaves the memory tiers no rows (device "
                          f"{args.device_share:g} and RAM {args.ram_share:g} of the rows); give "
                          f"--rows {need:,} or more, or larger --device-share / --ram-share")
    spec = BenchSpec(rows=args.rows, dim=args.dim, dtype=args.dtype, batch=args.batch,
                     warmup=args.warmup, timed=args.timed, device_share=args.device_share,
                     ram_share=args.ram_share, workdir=args.workdir,
                     codec_rows=min(100_000, args.rows),
                     alphas=tuple(args.alpha), codecs=() if args.no_codecs else BenchSpec.codecs)
    run(spec, progress=not args.quiet)
    return 0


def _print_info(info: dict, as_json: bool):
    if as_json:
        print(json.dumps(info, indent=2))
        return
    flat = {}
    for key, value in info.items():
        if isinstance(value, dict) and key == "tiers":
            for tier, fields in value.items():
                for name, v in fields.items():
                    flat[f"{tier}_{name}"] = v
        else:
            flat[key] = value
    width = max(map(len, flat))
    for key, value in flat.items():
        print(f"{key:<{width}}  {value}")


def _stat(args):
    from .config import StoreConfig
    from .policy import CacheState

    with api.open(args.path, readonly=True) as store:
        disk = store.disk
        records = disk.stored_rows()
        used = disk.used_bytes()
        row_bytes = store.dim * store.dtype.itemsize
        info = {
            "path": str(store.path),
            "num_rows": store.num_rows,
            "dim": store.dim,
            "dtype": store.dtype.name,
            "codec": store.codec.get_config(),
            "init": ({"kind": "stored"} if store.format.every_row_stored else
                     {"kind": "constant", "value": store.format.init_value}),
            "allow_nonfinite": store.format.allow_nonfinite,
            "format_version": disk.version,
            "stored_records": records,
            "file_bytes": disk.file_bytes(),
            "used_bytes": used,
            "logical_bytes": store.num_rows * row_bytes,
            "row_bytes": row_bytes,
            "disk_bytes_per_record": round(used / records, 1) if records else None,
        }
    defaults = StoreConfig()
    device = defaults.device_rows if args.device_rows is None else args.device_rows
    ram = defaults.ram_rows if args.ram_rows is None else args.ram_rows
    if device < 0 or ram < 0 or device + ram < 1:
        raise ConfigError("--device-rows and --ram-rows must be >= 0, together >= 1")
    info["tiers"] = {
        "device": {"rows": device, "bytes": device * row_bytes},
        "ram": {"rows": ram, "bytes": ram * row_bytes},
        "bookkeeping": {"bytes": CacheState.new(device, ram, args.policy).nbytes()},
        "disk": {"rows": info["num_rows"], "bytes": used},
    }
    _print_info(info, args.json)
    return 0


def _check(args):
    with api.open(args.path, readonly=True) as store:
        report = store.check(progress=not args.quiet)
    print(report)
    return 0 if report.ok else 1


def _salvage(args):
    from .salvage import salvage

    report = salvage(args.src, args.dst, overwrite=args.overwrite, num_rows=args.num_rows,
                     dim=args.dim, dtype=args.dtype, codec=args.codec, progress=not args.quiet)
    print(report)
    return 0 if report.ok else 1


def _create(args):
    store = api.create(args.path, args.rows, args.dim, args.dtype, init=args.init,
                       overwrite=args.overwrite, codec=_codec_arg(args.codec),
                       allow_nonfinite=args.allow_nonfinite)
    with store:
        print(f"created {store.path}: {store.num_rows:,} rows x {store.dim} {store.dtype.name}, "
              f"codec {store.codec.codec_id}, every row {args.init}")
    return 0


def _codec_arg(text: str):
    if text.lstrip().startswith("{"):
        try:
            return json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"--codec is not valid JSON ({exc})") from None
    return text


def _import(args):
    from .transfer import import_table, open_source

    src = open_source(args.source, args.tensor)
    summary = import_table(src, args.path, dtype=args.dtype, codec=_codec_arg(args.codec),
                           overwrite=args.overwrite, allow_nonfinite=args.allow_nonfinite,
                           start=args.start, chunk_rows=args.chunk_rows,
                           progress=not args.quiet)
    where = f" rows {args.start:,}.." if args.start is not None else ""
    print(f"imported {summary['source']} into {summary['path']}{where}: {summary['rows']:,} rows "
          f"x {summary['dim']} {summary['dtype']} in {summary['seconds']:.1f} s")
    return 0


def _export(args):
    from .transfer import export_npy

    summary = export_npy(args.path, args.out, chunk_rows=args.chunk_rows, progress=not args.quiet)
    print(f"exported {summary['path']} to {summary['out']}: {summary['rows']:,} rows x "
          f"{summary['dim']} {summary['dtype']} in {summary['seconds']:.1f} s")
    return 0


def _profile(args):
    import numpy as np

    from . import profile as P

    source = {}
    if args.ngram or args.text:
        if args.text:
            if args.trace:
                raise ConfigError("give either TRACE (token ids) or --text FILE, not both")
            tokens, vocab = P.read_text_tokens(args.text)
            source["path"] = str(args.text)
            vocab_size = args.vocab_size or vocab
        else:
            if not args.trace:
                raise ConfigError("--ngram needs TRACE, a .npy of token ids (or --text FILE)")
            tokens = P.load_tokens(args.trace)
            source["path"] = str(args.trace)
            vocab_size = args.vocab_size
        table_size = args.table_size
        if table_size is not None and len(table_size) == 1:
            table_size = table_size[0]
        trace, hasher = P.ngram_trace(tokens, vocab_size, max_ngram=args.max_ngram,
                                      heads=args.heads, table_size=table_size,
                                      layer_id=args.layer_id, seed=args.seed, pad_id=args.pad_id)
        source.update(format="text" if args.text else "token ids", num_rows=hasher.num_rows,
                      num_rows_source="the hasher's tables",
                      ngram={"tokens": int(np.asarray(tokens).size),
                             "vocab_size": hasher.vocab_size, "max_ngram": hasher.max_ngram,
                             "heads": hasher.heads, "ids_per_token": hasher.ids_per_token,
                             "layer_id": hasher.layer_id, "seed": hasher.seed,
                             "pad_id": hasher.pad_id})
    else:
        if not args.trace:
            raise ConfigError("give TRACE, a .npy of row ids (or --ngram / --text)")
        trace = P.load_trace(args.trace, args.format)
        source.update(path=str(args.trace), format=args.format)
    if args.counts_rows and not args.write_counts:
        raise ConfigError("--counts-rows sizes the --write-counts file: give --write-counts too")
    if args.write_counts and not os.path.isdir(os.path.dirname(os.path.abspath(args.write_counts))):
        raise FileNotFoundError(f"--write-counts {args.write_counts}: no such folder")
    row_bytes, row_bytes_from, store_rows = _profile_row_bytes(args)
    num_rows = args.num_rows
    if num_rows is None and store_rows is not None and not (args.ngram or args.text):
        num_rows = store_rows           # the store's table is the id space
    spec = P.ProfileSpec(device_rows=args.device_rows, ram_rows=args.ram_rows,
                         policies=tuple(args.policies), batch=args.batch,
                         lookahead=args.lookahead, warmup=args.warmup,
                         target=args.target, device_target=args.device_target,
                         lookup_rate=args.lookup_rate, row_bytes=row_bytes,
                         row_bytes_from=row_bytes_from, num_rows=num_rows, sample_accesses=args.sample_accesses,
                         plot=args.plot)
    if args.verbose:
        report = P.profile(trace, spec, source,
                           lambda msg: print(f"tierstore profile: {msg}", file=sys.stderr))
    else:
        with progress(None, "profile", unit="steps", enabled=not args.quiet) as bar:
            def step(msg):      # counts the steps begun, names the current one
                bar.update(1)
                bar.set_postfix_str(msg)
            report = P.profile(trace, spec, source, step)
    if args.write_counts:
        _write_counts(args, trace, report)
    if args.json:
        print(json.dumps(report, indent=2, default=_json_default))
    else:
        print(P.format_report(report))
    return 0


def _write_counts(args, trace, report):
    """The counts file of ``--write-counts``: the most used ids, as many as memory holds."""
    from .warmstart import hot_counts, save_counts

    sim = report["simulation"]
    rows = args.counts_rows or sim["device_rows"] + sim["ram_rows"]
    ids, counts, accesses = hot_counts(trace, rows)
    path = save_counts(args.write_counts, ids, counts, accesses)
    report["counts_file"] = {"path": str(path), "ids": len(ids),
                             "share_of_accesses": float(counts.sum()) / accesses}
    if not args.quiet:
        print(f"tierstore profile: wrote the access counts of the {len(ids):,} most used ids "
              f"({counts.sum() / accesses:.1%} of the accesses) to {path}", file=sys.stderr)


def _profile_row_bytes(args) -> tuple[int, str, int | None]:
    """(bytes a row, where that figure comes from, the store's rows or None) for profile."""
    import numpy as np

    given = [flag for flag, value in (("--row-bytes", args.row_bytes), ("--dim", args.dim),
                                      ("--store", args.store)) if value is not None]
    if len(given) > 1:
        raise ConfigError(f"give the row size one way: {' or '.join(given)}, not both")
    if args.dtype is not None and args.dim is None:
        raise ConfigError("--dtype gives the row size with --dim")
    if args.row_bytes is not None:
        return args.row_bytes, "--row-bytes", None
    if args.dim is not None:
        dtype = args.dtype or "float16"
        return args.dim * np.dtype(dtype).itemsize, f"{args.dim} {dtype}", None
    if args.store is not None:
        with api.open(args.store, readonly=True) as store:
            return (store.dim * store.dtype.itemsize, f"{store.dim} {store.dtype.name}, "
                    f"from {args.store}", store.num_rows)
    return 256, "assumed: 128 float16; give --dim and --dtype, --store or --row-bytes", None


def _json_default(x):
    import numpy as np

    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"{type(x).__name__} is not JSON serialisable")


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _nonneg_int(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def _fraction(text):
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1], got {value}")
    return value


def _add_profile_command(sub):
    from .policy import POLICIES


    prof = sub.add_parser(
        "profile", help="replay an id trace through the tiers: hit ratios per tier and policy, "
        "bounds, tier sizes for a target hit ratio, bandwidth per tier",
        description="Replay an id trace through tierstore's own planner and print, per tier and "
        "policy, the hit ratios a store of the given sizes would reach, next to the static "
        "optimum and Belady's MIN; the smallest memory reaching --target under the default "
        "policy; and the bandwidth each tier must supply at --lookup-rate.")
    prof.add_argument("trace", nargs="?", help="a .npy of integer row ids (any shape), raw "
                      "little-endian int64 with --format raw, or token ids with --ngram")
    prof.add_argument("--format", choices=("npy", "raw"), default="npy",
                      help="TRACE's format: a .npy array, or raw little-endian int64 (default npy)")
    prof.add_argument("--device-rows", type=_nonneg_int, help="device tier rows "
                      "(default: 1%% of the id space)")
    prof.add_argument("--ram-rows", type=_nonneg_int, help="RAM tier rows "
                      "(default: 10%% of the id space)")
    prof.add_argument("--num-rows", type=_positive_int, help="rows in the table (default: the "
                      "largest id + 1, or the hasher's rows with --ngram)")
    prof.add_argument("--batch", type=_positive_int, default=1,
                      help="ids per lookup call (default 1: sequential)")
    prof.add_argument("--lookahead", type=_nonneg_int, default=0,
                      help="batches submitted ahead of each lookup (prefetch, lookup_async): "
                      "eviction spares the rows they will use (default 0)")
    prof.add_argument("--warmup", type=_fraction, default=0.0,
                      help="share of the trace that only warms the cache (default 0)")
    prof.add_argument("--policies", nargs="+", default=list(POLICIES), choices=POLICIES,
                      metavar="POLICY", help=f"policies to replay (default: all of "
                      f"{', '.join(POLICIES)})")
    prof.add_argument("--target", type=float, default=0.9,
                      help="combined hit ratio the sizing aims at (default 0.9)")
    prof.add_argument("--device-target", type=float,
                      help="size the device tier for this device hit ratio (default: keep the "
                      "given device share of memory)")
    prof.add_argument("--lookup-rate", type=float, default=1e6,
                      help="ids looked up per second, for the bandwidth table (default 1e6)")
    prof.add_argument("--dim", type=_positive_int, help="values per row: with --dtype, the "
                      "row size of the memory and bandwidth figures")
    prof.add_argument("--dtype", choices=("float16", "float32", "float64"),
                      help="the rows' dtype, with --dim (default float16)")
    prof.add_argument("--store", metavar="PATH", help="the store the trace is for: its dim and "
                      "dtype give the row size, its rows the id space")
    prof.add_argument("--row-bytes", type=_positive_int, help="bytes per row, in place of "
                      "--dim/--dtype or --store (without any of them: 256, 128 float16)")
    prof.add_argument("--sample-accesses", type=_positive_int, default=2_000_000,
                      help="accesses in the spatial sample the sizing search runs on "
                      "(default 2,000,000)")
    prof.add_argument("--json", action="store_true", help="print the figures as JSON")
    prof.add_argument("--plot", metavar="OUT.png", help="draw the miss-ratio curves of every "
                      "policy against memory size (needs matplotlib: tierstore[plot])")
    prof.add_argument("--write-counts", metavar="OUT.npz", help="also write the access counts "
                      "of the most used ids, for a warm start: tierstore.open(path, config, "
                      "warm=OUT.npz) loads those rows into memory at open")
    prof.add_argument("--counts-rows", type=_positive_int, help="ids in the --write-counts file "
                      "(default: the memory tiers' rows, --device-rows + --ram-rows)")
    prof.add_argument("-v", "--verbose", action="store_true", help="a line on stderr per step, "
                      "in place of the progress bar")
    prof.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    ngram = prof.add_argument_group("Engram n-gram ids (tierstore.hashing.NgramHasher)")
    ngram.add_argument("--ngram", action="store_true", help="TRACE holds token ids ([seq] or "
                       "[batch, seq], read row by row); profile their hashed n-gram row ids")
    ngram.add_argument("--text", metavar="FILE", help="UTF-8 text instead of TRACE: its words "
                       "and punctuation become token ids (first-seen order), then --ngram")
    ngram.add_argument("--vocab-size", type=_positive_int,
                       help="token vocabulary (default: the largest token id + 1)")
    ngram.add_argument("--max-ngram", type=int, default=3,
                       help="longest n-gram hashed (default 3: bigrams and trigrams)")
    ngram.add_argument("--heads", type=_positive_int, default=8,
                       help="hash heads per n-gram order (default 8)")
    ngram.add_argument("--table-size", type=_positive_int, nargs="+",
                       help="rows per table, one value or one per order (default 5 x vocab)")
    ngram.add_argument("--layer-id", type=_nonneg_int, default=0,
                       help="the Engram layer: with --seed, picks the hash multipliers (default 0)")
    ngram.add_argument("--seed", type=_nonneg_int, default=0,
                       help="with --layer-id, picks the hash multipliers (default 0)")
    ngram.add_argument("--pad-id", type=_nonneg_int, default=0,
                       help="token id that fills the positions before a sequence (default 0)")
    prof.set_defaults(run=_profile)


def _add_create_command(sub):
    create = sub.add_parser("create", help="create an empty store (every row a constant)")
    create.add_argument("path", help="the store's folder (created)")
    create.add_argument("--rows", type=_positive_int, required=True, help="rows in the table")
    create.add_argument("--dim", type=_positive_int, required=True, help="values per row")
    create.add_argument("--dtype", default="float16", choices=("float16", "float32", "float64"),
                        help="the rows' dtype (default float16)")
    create.add_argument("--codec", default="raw", help="raw, zstd, int8, or a JSON config")
    create.add_argument("--init", type=float, default=0.0, help="every row's value (default 0)")
    create.add_argument("--allow-nonfinite", action="store_true",
                        help="let rows hold NaN and Inf (refused by default)")
    create.add_argument("--overwrite", action="store_true", help="replace a store at PATH")
    create.set_defaults(run=_create)


def _add_import_command(sub):
    imp = sub.add_parser("import", help="a .npy (memory-mapped) or safetensors tensor -> a store")
    imp.add_argument("source", help="a .npy file or a .safetensors file")
    imp.add_argument("path", help="the store to create (or to write into, with --start)")
    imp.add_argument("--tensor", help="which tensor of a safetensors file holding several")
    imp.add_argument("--dtype", choices=("float16", "float32", "float64"),
                     help="the store's dtype (default: the source's; bf16 becomes float32)")
    imp.add_argument("--codec", default="raw", help="raw, zstd, int8, or a JSON config")
    imp.add_argument("--start", type=_nonneg_int, help="write into the existing store at PATH, "
                     "from this row on")
    imp.add_argument("--chunk-rows", type=_positive_int, default=1 << 16,
                     help="rows read and written at a time (default 65,536)")
    imp.add_argument("--allow-nonfinite", action="store_true",
                     help="let rows hold NaN and Inf (refused by default)")
    imp.add_argument("--overwrite", action="store_true", help="replace a store at PATH")
    imp.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    imp.set_defaults(run=_import)


def _add_export_command(sub):
    exp = sub.add_parser("export", help="every row of a store -> a .npy file")
    exp.add_argument("path", help="the store to read")
    exp.add_argument("out", help="the .npy file to write")
    exp.add_argument("--chunk-rows", type=_positive_int, default=1 << 16,
                     help="rows read and written at a time (default 65,536)")
    exp.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    exp.set_defaults(run=_export)


def _add_bench_command(sub):
    bench = sub.add_parser("bench", help="create a store from a generated table, run Zipf and "
                           "drifting id streams through it, print hit ratios and throughput")
    bench.add_argument("--rows", type=_positive_int, default=1_000_000,
                       help="rows in the generated table (default 1,000,000)")
    bench.add_argument("--dim", type=_positive_int, default=128,
                       help="values per row (default 128)")
    bench.add_argument("--dtype", default="float16", choices=("float16", "float32", "float64"),
                       help="the table's dtype (default float16)")
    bench.add_argument("--batch", type=_positive_int, default=65536,
                       help="ids per lookup call (default 65,536)")
    bench.add_argument("--warmup", type=_nonneg_int, default=10,
                       help="warm-up batches per stream (default 10)")
    bench.add_argument("--timed", type=_positive_int, default=20,
                       help="timed batches per stream (default 20)")
    bench.add_argument("--device-share", type=_fraction, default=0.01,
                       help="device tier rows as a share of the table (default 0.01)")
    bench.add_argument("--ram-share", type=_fraction, default=0.10,
                       help="RAM tier rows as a share of the table (default 0.10)")
    bench.add_argument("--alpha", type=float, nargs="+", default=[0.8, 1.0, 1.2],
                       help="Zipf exponents of the id streams (default 0.8 1.0 1.2)")
    bench.add_argument("--no-codecs", action="store_true", help="skip the codec size table")
    bench.add_argument("--workdir", help="where to build the store (default: a temporary folder)")
    bench.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    bench.set_defaults(run=_bench)


def _add_stat_command(sub):
    from .policy import POLICIES

    stat = sub.add_parser("stat", help="metadata, sizes, codec, and what tiers of the given "
                          "sizes would hold")
    stat.add_argument("path", help="the store")
    stat.add_argument("--json", action="store_true", help="print the figures as JSON")
    stat.add_argument("--device-rows", type=int, help="device tier rows to size "
                      "(default: StoreConfig's)")
    stat.add_argument("--ram-rows", type=int, help="RAM tier rows to size (default: StoreConfig's)")
    stat.add_argument("--policy", default="adaptive", choices=POLICIES,
                      help="policy whose bookkeeping is sized (default adaptive)")
    stat.set_defaults(run=_stat)


def _add_check_command(sub):
    check = sub.add_parser("check", help="verify every stored row; exit 1 on damage")
    check.add_argument("path", help="the store")
    check.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    check.set_defaults(run=_check)


def _add_salvage_command(sub):
    salv = sub.add_parser("salvage", help="copy every readable row of a damaged store into a new "
                          "one; exit 1 if rows were lost")
    salv.add_argument("src", help="the damaged store")
    salv.add_argument("dst", help="the new store to write")
    salv.add_argument("--overwrite", action="store_true", help="replace a store at DST")
    salv.add_argument("--num-rows", type=_positive_int, help="when the metadata is damaged")
    salv.add_argument("--dim", type=_positive_int, help="when the metadata is damaged")
    salv.add_argument("--dtype", choices=("float16", "float32", "float64"),
                      help="when the metadata is damaged")
    salv.add_argument("--codec", help="when the metadata is damaged")
    salv.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    salv.set_defaults(run=_salvage)


# the library's messages name its keyword arguments; on the command line they are flags
_KEYWORDS_AS_FLAGS = (("allow_nonfinite=True", "--allow-nonfinite"),
                      ("overwrite=True", "--overwrite"))


def _in_flags(message: str) -> str:
    for keyword, flag in _KEYWORDS_AS_FLAGS:
        message = message.replace(keyword, flag)
    return message


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tierstore", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_profile_command, _add_create_command, _add_import_command,
                _add_export_command, _add_bench_command, _add_stat_command,
                _add_check_command, _add_salvage_command):
        add(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except BrokenPipeError:
        # the reader left (tierstore profile ... | head): nothing more to say, and nothing to
        # flush at exit either
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (TierstoreError, OSError) as exc:
        print(f"tierstore {args.command}: {_in_flags(str(exc))}", file=sys.stderr)
        _print_notes(args.command, exc)
        return 2
    except KeyboardInterrupt as exc:
        print(f"tierstore {args.command}: interrupted", file=sys.stderr)
        _print_notes(args.command, exc)
        return 130


def _print_notes(command: str, exc: BaseException):
    """What the command adds to an error (``import --start``: how many rows it wrote)."""
    for note in getattr(exc, "__notes__", ()):
        print(f"tierstore {command}: {note}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
