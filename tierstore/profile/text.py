"""The profile as text: the report ``tierstore profile`` prints."""
from __future__ import annotations


def _n(x) -> str:
    return f"{int(x):,}"


def _rate(x: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= scale:
            return f"{x / scale:.2f} {unit}"
    return f"{x:.1f}"


def _bytes(x: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if x >= scale:
            return f"{x / scale:.2f} {unit}"
    return f"{x:.0f} B"


def _table(header, rows) -> list[str]:
    cells = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def line(r):
        return "| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w)
                                 for i, (c, w) in enumerate(zip(r, widths))) + " |"
    sep = "|" + "|".join("-" * (w + 1) + (":" if i else "-") for i, w in enumerate(widths)) + "|"
    return [line(cells[0]), sep] + [line(r) for r in cells[1:]]


def format_report(report: dict) -> str:
    t, sim, rec, bw = report["trace"], report["simulation"], report["recommendation"], \
        report["bandwidth"]
    out = []
    what = t.get("path", "trace")
    if t.get("ngram"):
        g = t["ngram"]
        what += (f" (Engram n-gram ids of {_n(g['tokens'])} tokens: orders 2-{g['max_ngram']}, "
                 f"{g['heads']} heads, {g['ids_per_token']} ids per token)")
    out.append(f"trace           {what}")
    out.append(f"accesses        {_n(t['accesses'])}")
    out.append(f"unique ids      {_n(t['unique_ids'])} of {_n(t['id_space'])} rows "
               f"(id space: {t['id_space_source']})")
    z = report["zipf"]
    if z["alpha"] is not None:
        out.append(f"Zipf exponent   {z['alpha']:.3f} (least squares of log count on log rank, "
                   f"ranks 1-{_n(z['ranks'][1])}, R^2 {z['r2']:.3f})")
    cov = ", ".join(f"top {k[4:]} of rows ({_n(v['rows'])}) serve {v['share_of_accesses']:.1%}"
                    for k, v in report["coverage"].items())
    out.append(f"coverage        {cov}")
    out.append("")
    counted = (f"the first {_n(sim['warmup_accesses'])} accesses warm the cache, the other "
               f"{_n(sim['measured_accesses'])} count"
               if sim["warmup_accesses"] else
               f"all {_n(sim['measured_accesses'])} accesses counted, cold start included")
    batch = "sequential (batch 1)" if sim["batch"] == 1 else f"batches of {_n(sim['batch'])} ids"
    if sim.get("lookahead"):
        k = sim["lookahead"]
        batch += f", {k} batch{'es' if k > 1 else ''} submitted ahead (hit ratios only; sizing without)"
    out.append(f"Hit ratios: device {_n(sim['device_rows'])} rows + RAM {_n(sim['ram_rows'])} "
               f"rows, {batch}, {counted}")
    rows = []
    for name, r in sim["results"].items():
        label = name + (" (default)" if name == sim["default_policy"] else "")
        speed = f"{r['ns_per_access']:.0f}" if "ns_per_access" in r else ""
        rows.append([label, f"{r['device_hit_ratio']:.3f}", f"{r['ram_hit_ratio']:.3f}",
                     f"{r['combined_hit_ratio']:.3f}", f"{r['miss_ratio']:.3f}",
                     f"{r['read_ratio']:.3f}", speed])
    out += _table(["policy", "device", "RAM", "combined", "disk", "rows read", "ns/access"], rows)
    out.append("device, RAM, disk: share of accesses each tier served; rows read: rows read from "
               "disk per access (a batch reads a row once, however often it uses it).")
    out.append("static optimum: the most used rows pinned from the start (no cold misses); "
               "Belady MIN: the offline optimum of a demand-filled cache.")
    if sim["replay"] == "simulate_trace":
        how = "policy.planner.simulate_trace"
    else:
        how = (f"{'a fast' if sim['replay'] == 'fast' else 'a'} sequential loop over "
               f"policy.planner.plan_batch, compiled in {sim['replay_setup_seconds']:.1f} s")
    out.append(f"ns/access: replay time per access on one core ({how}).")
    out.append("")
    if not rec["reachable"]:
        out.append(f"Sizing: a combined hit ratio of {rec['target']} is out of reach: "
                   f"with every id in memory it is {rec['best_possible']:.4f} "
                   "(the first access to each id always misses).")
    else:
        v = rec["verified"]
        how = (f"device share {rec['device_share']:.1%} of memory, as given" if
               rec["device_target"] is None else
               f"device tier sized for a device hit ratio of {rec['device_target']}")
        out.append(f"Sizing for a combined hit ratio of {rec['target']} under {rec['policy']}: "
                   f"device {_n(rec['device_rows'])} + RAM {_n(rec['ram_rows'])} = "
                   f"{_n(rec['memory_rows'])} rows ({how}; every id in memory would reach "
                   f"{rec['best_possible']:.3f})")
        out.append(f"  on the whole trace: device {v['device_hit_ratio']:.3f}, RAM "
                   f"{v['ram_hit_ratio']:.3f}, combined {v['combined_hit_ratio']:.3f}"
                   + ("" if rec["met"] else "  (short of the target: the replays allowed ran out)"))
        out.append(f"  memory: device {_bytes(rec['device_bytes'])} + RAM "
                   f"{_bytes(rec['ram_bytes'])} of {bw['row_bytes']}-byte rows, policy bookkeeping "
                   f"{_bytes(rec['bookkeeping_bytes'])}")
        sample = (f"a 1-in-{round(1 / rec['sample_rate'])} sample of the ids by popularity "
                  f"({_n(rec['sample_accesses'])} accesses)")
        full = rec["full_replays"]
        if rec["sample_rate"] < 1:
            out.append(f"  searched in {rec['sample_replays']} replays of {sample}, then "
                       f"{full} replay{'s' if full != 1 else ''} of the whole trace")
        else:
            out.append(f"  searched in {rec['sample_replays'] + full} replays of the whole trace")
    out.append("")
    out.append(f"Bandwidth at {_rate(bw['lookup_rate'])} lookups/s of {bw['row_bytes']}-byte rows "
               f"({bw['row_bytes_from']}; policy {bw['policy']}):")
    labels = {"device_reads": "device reads", "ram_reads": "RAM reads (to the device)",
              "disk_reads": "disk reads", "admissions": "admissions (disk -> memory)",
              "promotions": "promotions (RAM -> device)", "demotions": "demotions (device -> RAM)"}
    given = _n(sim["device_rows"] + sim["ram_rows"])
    header = ["traffic", f"rows/s, {given} rows", "bytes/s"]
    if bw["recommended"]:
        header += [f"rows/s, {_n(rec['memory_rows'])} rows", "bytes/s"]
    rows = []
    for key, label in labels.items():
        g = bw["given"][key]
        row = [label, _rate(g["rows_per_s"]), _bytes(g["bytes_per_s"]) + "/s"]
        if bw["recommended"]:
            r = bw["recommended"][key]
            row += [_rate(r["rows_per_s"]), _bytes(r["bytes_per_s"]) + "/s"]
        rows.append(row)
    out += _table(header, rows)
    if report.get("plot"):
        out.append("")
        out.append(f"miss-ratio curves written to {report['plot']}")
    out.append(f"(profiled in {report['seconds']:.1f} s)")
    return "\n".join(out)
