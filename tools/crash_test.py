"""Crash test: SIGKILL a writer at random moments; no acknowledged flush may be lost.

    python tools/crash_test.py                  # the full run: 210 kills (about two minutes)
    python tools/crash_test.py --kills 30 --seed 7 --workdir /tmp/crash

A child process opens the store with tiny memory tiers (4 device + 28 RAM rows for
6000 rows, so lookups evict dirty rows and write them back) and loops: update a
few rows to the step's version, look rows up (checking it reads back exactly what
it wrote), sometimes prefetch, sometimes flush; after each ``flush()`` returns it
appends the step to a log file and fsyncs it. Every row is written with a
self-checking pattern: all its elements derive from one version number and the
row id, so a torn or misplaced row is detected.

The parent kills the child with SIGKILL, a third of the time at a random moment,
a third while it writes back evicted dirty rows during a lookup, a third inside
``flush()`` (encoding, the LMDB commit or the sync). A shared page tells the
parent what the child is doing and in which phase it died. Then the parent opens
the store read-only and checks every row:

- no row is torn, and each holds a version that really was written to it;
- each row's version is at least the one of its last update before the last
  logged flush, and at least what the previous check saw (committed data never
  goes back);
- ``check()`` passes.

Children are forked from a warmed-up "zygote" process (a fresh interpreter takes
about 1.5 s to import and load the compiled kernels; a fork takes milliseconds).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

NUM_ROWS = 6000
DIM = 8
HOT = 48                 # a hot set a bit larger than memory: hot rows are updated while resident
STEP_SPAN = 1_000_000    # version = round * STEP_SPAN + step: versions only grow
# writeback_rows=1: every dirty eviction is committed at once, so the aimed kills can land
# inside those commits (a larger buffer makes them rare and brief)
CHILD_TIERS = {"device_rows": 4, "ram_rows": 28, "map_size": 1 << 20, "writeback_rows": 1}
FLUSH_P = 0.15
PREFETCH_P = 0.1

# phases (slot 0 of the shared page)
IDLE, UPDATE, LOOKUP, WRITEBACK, PREFETCH, FLUSH, FLUSH_COMMIT, SYNC, GROW, OPEN = range(10)
PHASES = ["idle", "update", "lookup", "writeback", "prefetch", "flush-encode",
          "flush-commit", "flush-sync", "map-grow", "open"]
# slots of the shared page: phase, step started, write-backs entered, flush commits entered
PH_PHASE, PH_STEP, PH_WRITEBACKS, PH_FLUSHES = range(4)
MODES = ("random", "writeback", "flush")


# -- the self-checking row pattern ------------------------------------------------------------
def pattern(ids, versions, dim=DIM) -> np.ndarray:
    """Row ``id`` at ``version``: [version, id, then values derived from both] (exact in float64)."""
    ids = np.asarray(ids, dtype=np.int64)
    v = np.broadcast_to(np.asarray(versions, dtype=np.float64), ids.shape)
    rows = np.empty((len(ids), dim), dtype=np.float64)
    rows[:, 0] = v
    rows[:, 1] = ids
    rows[:, 2:] = v[:, None] * 1009.0 + ids[:, None] * 7.0 + np.arange(2, dim) * 0.5
    return rows


def read_versions(ids, rows):
    """(versions, torn mask): a row is torn when it is not exactly ``pattern(id, its version)``."""
    rows = np.asarray(rows, dtype=np.float64).reshape(len(ids), -1)
    versions = rows[:, 0].copy()
    torn = ~np.all(rows == pattern(ids, versions, rows.shape[1]), axis=1)
    return versions, torn


def step_ids(seed: int, round_no: int, step: int, num_rows: int = NUM_ROWS) -> np.ndarray:
    """The rows updated at one step: a function of (seed, round, step) only, so the parent can replay it."""
    rng = np.random.default_rng([seed, round_no, step])
    k = int(rng.integers(1, 40))
    hot = rng.integers(0, HOT, k // 2 + 1)
    cold = rng.integers(0, num_rows, k - len(hot))
    return np.concatenate([hot, cold]).astype(np.int64)


# -- the child --------------------------------------------------------------------------------
def child_writer(path, log_path, phase_path, round_no, seed, num_rows=NUM_ROWS):
    """Update, look up, prefetch and flush until killed; log each completed flush."""
    import tierstore as ts

    ph = np.memmap(phase_path, dtype=np.int64, mode="r+", shape=(8,))
    ph[PH_PHASE] = OPEN
    store = ts.open(path, config=ts.StoreConfig(**CHILD_TIERS))
    _instrument(store, ph)
    ph[PH_PHASE] = LOOKUP
    all_ids = np.arange(num_rows)
    latest, torn = read_versions(all_ids, store.lookup(all_ids))
    if torn.any():
        raise AssertionError(f"rows {np.flatnonzero(torn)[:10]} torn at open")
    log_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    rng = np.random.default_rng([seed, round_no, 1 << 40])
    step = 0
    while True:
        step += 1
        version = round_no * STEP_SPAN + step
        ids = step_ids(seed, round_no, step, num_rows)
        ph[PH_STEP] = step
        ph[PH_PHASE] = UPDATE
        store.update(ids, pattern(ids, version))
        latest[ids] = version
        ph[PH_PHASE] = LOOKUP
        n = int(rng.integers(8, 64))
        lids = np.where(rng.random(n) < 0.5, rng.integers(0, HOT, n), rng.integers(0, num_rows, n))
        got = store.lookup(lids)
        if not np.array_equal(got, pattern(lids, latest[lids])):
            bad = lids[~np.all(got == pattern(lids, latest[lids]), axis=1)]
            raise AssertionError(f"step {step}: rows {bad[:10]} do not read back what was written")
        if rng.random() < PREFETCH_P:
            ph[PH_PHASE] = PREFETCH
            store.prefetch(rng.integers(0, num_rows, 32))
        if rng.random() < FLUSH_P:
            ph[PH_PHASE] = FLUSH
            store.flush()
            ph[PH_PHASE] = IDLE
            os.write(log_fd, f"{step}\n".encode())
            os.fsync(log_fd)
        ph[PH_PHASE] = IDLE


def _instrument(store, ph):
    """Tell the parent (through the shared page) when the store writes back, commits, syncs, grows."""
    def wrap(obj, name, phase_for):
        inner = getattr(obj, name)

        def wrapper(*args, **kwargs):
            prev = int(ph[PH_PHASE])
            phase = phase_for(prev)
            if phase is not None:
                ph[PH_PHASE] = phase
                if phase == WRITEBACK:
                    ph[PH_WRITEBACKS] += 1
                elif phase == FLUSH_COMMIT:
                    ph[PH_FLUSHES] += 1
            try:
                return inner(*args, **kwargs)
            finally:
                ph[PH_PHASE] = prev
        setattr(obj, name, wrapper)

    wrap(store, "_write_back", lambda prev: WRITEBACK)
    wrap(store.disk, "write", lambda prev: FLUSH_COMMIT if prev == FLUSH else None)
    wrap(store.disk, "sync", lambda prev: SYNC if prev == FLUSH else None)
    wrap(store.disk, "_grow", lambda prev: GROW)


def child_create(path, num_rows, dim):
    """Create a store from a (slow) callable init; the parent kills it part way."""
    import tierstore as ts

    def init(a, b):
        return pattern(np.arange(a, b), 0, dim)
    ts.create(path, num_rows, dim, "float64", init=init,
              config=ts.StoreConfig(device_rows=4, ram_rows=28, map_size=1 << 20)).close()
    time.sleep(60)  # wait to be killed


# -- the zygote: a warm process that forks children -------------------------------------------
class Zygote:
    """A warmed-up Python process (tierstore imported, kernels loaded) that forks children.

    The parent kills a child by pid; the zygote reaps it only when asked, so the
    pid cannot be reused by another process in between.
    """

    def __init__(self):
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            filter(None, [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH")]))}
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--zygote"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env=env)
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            self.proc.kill()
            raise RuntimeError(f"zygote failed to start: {line!r}")

    def _ask(self, **cmd):
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def spawn(self, fn: str, err_path, **kwargs) -> int:
        return self._ask(op="spawn", fn=fn, err_path=str(err_path), kwargs=kwargs)

    def reap(self, pid: int) -> int:
        """The child's exit code, or -signal when a signal ended it."""
        return self._ask(op="reap", pid=pid)

    def close(self):
        if self.proc.poll() is None:
            try:
                self._ask(op="exit")
            except (BrokenPipeError, ValueError):
                pass
            self.proc.wait(timeout=30)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _zygote_main():
    _warm_up()
    print("ready", flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "spawn":
            pid = os.fork()
            if pid == 0:
                _run_child(cmd)
            print(json.dumps(pid), flush=True)
        elif cmd["op"] == "reap":
            _, status = os.waitpid(cmd["pid"], 0)
            print(json.dumps(os.waitstatus_to_exitcode(status)), flush=True)
        else:
            print(json.dumps(0), flush=True)
            return


def _run_child(cmd):
    code = 0
    try:
        fd = os.open(cmd["err_path"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        globals()[cmd["fn"]](**cmd["kwargs"])
    except BaseException:  # noqa: BLE001  (the child reports anything, then exits)
        traceback.print_exc()
        code = 3
    finally:
        sys.stderr.flush()
        os._exit(code)


def _warm_up():
    """Load every compiled kernel the children use, so a fork starts warm."""
    import tierstore as ts

    with tempfile.TemporaryDirectory() as tmp:
        ids = np.arange(200)
        with ts.create(Path(tmp) / "w", 200, DIM, "float64", init=lambda a, b: pattern(np.arange(a, b), 0),
                       config=ts.StoreConfig(**CHILD_TIERS)) as s:
            s.update(ids[:50], pattern(ids[:50], 1))
            s.lookup(ids)
            s.prefetch(ids[::3]).wait()
            s.lookup(ids[::-1])
            s.flush()
            s.check()
        with ts.open(Path(tmp) / "w", readonly=True, config=ts.StoreConfig(**CHILD_TIERS)) as s:
            s.lookup(ids)
            s.refresh()


# -- the parent -------------------------------------------------------------------------------
@dataclass
class Result:
    kills: int = 0
    modes: dict = field(default_factory=dict)
    phases: dict = field(default_factory=dict)
    steps: int = 0
    flushes_logged: int = 0
    writebacks: int = 0
    rows_verified: int = 0
    rows_above_floor: int = 0   # rows holding an update newer than the last logged flush
    failures: list = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        lines = [
            f"kills: {self.kills} ({', '.join(f'{k} {v}' for k, v in self.modes.items())})",
            "phase at the kill: " + ", ".join(f"{k} {v}" for k, v in sorted(self.phases.items(),
                                                                            key=lambda kv: -kv[1])),
            (f"steps run: {self.steps}; flushes acknowledged: {self.flushes_logged}; "
             f"dirty write-backs entered: {self.writebacks}"),
            (f"rows verified after kills: {self.rows_verified} "
             f"({self.rows_above_floor} held unflushed updates that had reached disk)"),
            f"failures: {len(self.failures)}",
            f"seconds: {self.seconds:.1f}",
        ]
        lines += [f"  FAIL {f}" for f in self.failures[:20]]
        return "\n".join(lines)


def run(kills: int = 210, seed: int = 1, workdir=None, num_rows: int = NUM_ROWS,
        verbose: bool = False) -> Result:
    """Kill ``kills`` children; return what was seen. ``failures`` must come back empty."""
    import tierstore as ts

    t0 = time.monotonic()
    own_dir = workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="tierstore-crash-") if own_dir else workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "store"
    log_path, phase_path, err_path = workdir / "flushes.log", workdir / "phase", workdir / "child.err"
    rng = np.random.default_rng(seed)
    result = Result()
    ts.create(path, num_rows, DIM, "float64", init=lambda a, b: pattern(np.arange(a, b), 0),
              config=ts.StoreConfig(**CHILD_TIERS), overwrite=True).close()
    floor = np.zeros(num_rows)                           # what each row must hold at least
    written = np.arange(num_rows, dtype=np.int64) << 32  # (row << 32 | version) of every write
    try:
        with Zygote() as zygote:
            for k in range(kills):
                round_no = k + 1
                mode = MODES[k % len(MODES)]
                log_path.write_bytes(b"")
                phase_path.write_bytes(bytes(64))
                ph = np.memmap(phase_path, dtype=np.int64, mode="r+", shape=(8,))
                pid = zygote.spawn("child_writer", err_path, path=str(path), log_path=str(log_path),
                                   phase_path=str(phase_path), round_no=round_no, seed=seed,
                                   num_rows=num_rows)
                try:
                    _wait_for_moment(ph, mode, rng)
                finally:
                    os.kill(pid, signal.SIGKILL)
                phase = PHASES[int(ph[PH_PHASE])]
                code = zygote.reap(pid)
                result.kills += 1
                result.modes[mode] = result.modes.get(mode, 0) + 1
                result.phases[phase] = result.phases.get(phase, 0) + 1
                result.writebacks += int(ph[PH_WRITEBACKS])
                if code != -signal.SIGKILL:
                    result.failures.append(f"round {round_no}: the child ended by itself ({code}): "
                                           + err_path.read_text()[-2000:])
                    break
                logged = [int(x) for x in log_path.read_text().split()]
                flushed, started = (logged[-1] if logged else 0), int(ph[PH_STEP])
                result.steps += started
                result.flushes_logged += len(logged)
                del ph
                floor, written = _replay(floor, written, seed, round_no, flushed, started, num_rows)
                observed = _verify(ts, path, floor, written, round_no, result)
                if observed is None:
                    break
                result.rows_above_floor += int((observed > floor).sum())
                floor = observed  # committed: later checks must see at least this
                if verbose:
                    print(f"kill {k + 1}: {mode:9s} died in {phase:13s} after {started} steps, "
                          f"{len(logged)} flushes", flush=True)
    finally:
        result.seconds = time.monotonic() - t0
        if own_dir and not result.failures:
            shutil.rmtree(workdir, ignore_errors=True)
    return result


def _wait_for_moment(ph, mode, rng, deadline_s=5.0):
    """Return when the child is where ``mode`` wants it killed."""
    start = time.monotonic()
    if mode == "random":
        time.sleep(float(rng.uniform(0.0, 0.5)))
        return
    if mode == "writeback":
        count_slot, targets, after = PH_WRITEBACKS, (WRITEBACK,), int(rng.integers(1, 30))
    else:
        count_slot, targets, after = PH_FLUSHES, (FLUSH, FLUSH_COMMIT, SYNC), int(rng.integers(1, 6))
    spin = float(rng.choice([0.0, rng.uniform(0, 3e-4)]))  # now, or a little later inside it
    while time.monotonic() - start < deadline_s:
        if ph[count_slot] >= after and ph[PH_PHASE] in targets:
            t = time.perf_counter()
            while time.perf_counter() - t < spin:
                pass
            return
        time.sleep(0)


def _replay(floor, written, seed, round_no, flushed, started, num_rows):
    """Per-row floors after ``flushed`` steps, and every (row, version) of steps up to ``started``."""
    floor = floor.copy()
    keys = []
    for step in range(1, started + 1):
        ids = step_ids(seed, round_no, step, num_rows)
        version = round_no * STEP_SPAN + step
        if step <= flushed:
            floor[ids] = np.maximum(floor[ids], version)
        keys.append((ids << 32) | version)
    if keys:
        written = np.union1d(written, np.concatenate(keys))
    return floor, written


def _verify(ts, path, floor, written, round_no, result):
    """Every row intact and new enough; the row versions observed, or None after a failure."""
    ids = np.arange(len(floor))
    try:
        with ts.open(path, readonly=True, config=ts.StoreConfig(**CHILD_TIERS)) as store:
            versions, torn = read_versions(ids, store.lookup(ids))
            report = store.check()
    except Exception as exc:  # noqa: BLE001  (any error is a failure to report)
        result.failures.append(f"round {round_no}: reopening failed: {type(exc).__name__}: {exc}")
        return None
    result.rows_verified += len(ids)
    problems = []
    if torn.any():
        problems.append(f"torn rows {np.flatnonzero(torn)[:10].tolist()}")
    lost = np.flatnonzero(~torn & (versions < floor))
    if len(lost):
        problems.append(f"rows {lost[:10].tolist()} lost acknowledged updates: versions "
                        f"{versions[lost[:5]].tolist()} < {floor[lost[:5]].tolist()}")
    keys = (ids << 32) | versions.astype(np.int64)
    foreign = np.flatnonzero(~torn & ~np.isin(keys, written))
    if len(foreign):
        problems.append(f"rows {foreign[:10].tolist()} hold versions never written to them")
    if not report.ok or report.rows_checked != len(ids):
        problems.append(f"check: {report} ({report.rows_checked} records)")
    if problems:
        result.failures.append(f"round {round_no}: " + "; ".join(problems))
        return None
    return versions


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=210)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", help="where the store lives (default: a temporary folder)")
    parser.add_argument("--verbose", action="store_true", help="one line per kill")
    parser.add_argument("--zygote", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.zygote:
        _zygote_main()
        return 0
    result = run(args.kills, args.seed, args.workdir, verbose=args.verbose)
    print(result.summary())
    return 1 if result.failures else 0


if __name__ == "__main__":
    sys.exit(main())
