"""Triton kernels of the CUDA tier: a lookup in one pass, and row writes into either slab.

:func:`lookup` probes the GPU index (:mod:`.gpu_index`) for each id, copies
its row from the HBM slab (device slots) or straight from the pinned RAM slab
over PCIe (RAM slots; the GPU reads host memory through UVA), writes the ids
of the planner's sample, and appends the ids found in neither to a miss list
(a count, then ``(position, id)`` pairs): one buffer, the only thing the host
reads back. :func:`scatter_rows` puts the rows the host read for the misses in
place; :func:`write_rows` writes rows into slots of either slab, so every
change of a slab is ordered on the tier's stream with the lookups that read it.

The RAM slab is pinned host memory that torch allocated; Triton takes it
through :class:`HostPointer` (a device-visible pointer with a dtype), since
torch has no CUDA tensor over host memory.
"""
from __future__ import annotations

import functools

BLOCK_IDS = 64
# splitmix64's finalizer (kernels/hashing.py), unsigned: Triton types them as uint64
M1 = 0xBF58476D1CE4E5B9
M2 = 0x94D049BB133111EB


class HostPointer:
    """Pinned host memory as a Triton pointer argument: its address and element type."""

    def __init__(self, pinned):
        self.pinned = pinned            # keeps the memory alive
        self.dtype = pinned.dtype
        self._ptr = pinned.data_ptr()

    def data_ptr(self) -> int:
        return self._ptr


@functools.lru_cache(maxsize=None)
def _kernels():
    try:
        import triton
        import triton.language as tl
    except ImportError:
        raise ImportError("device='cuda' needs Triton (it comes with torch's CUDA builds): "
                          "pip install triton") from None

    # the arguments that change from lookup to lookup are not specialized on, so one compiled
    # kernel serves a tier (see ``launch``)
    @triton.jit(do_not_specialize=["n", "rounds", "miss_cap", "sample_start", "sample_stride",
                                   "logged"])
    def lookup_kernel(ids_ptr, keys_ptr, vals_ptr, slab_ptr, ram_ptr, out_ptr, scratch_ptr,
                      n, mask, rounds, device_rows, dim, miss_cap, m1, m2,
                      sample_start, sample_stride, logged,
                      BLOCK: tl.constexpr, DIM: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        live = offs < n
        key = tl.load(ids_ptr + offs, mask=live, other=0)
        in_sample = live & (offs >= sample_start) & ((offs - sample_start) % sample_stride == 0)
        tl.store(scratch_ptr + 1 + (offs - sample_start) // sample_stride, key, mask=in_sample)
        z = key.to(tl.uint64, bitcast=True)
        z = (z ^ (z >> 30)) * m1
        z = (z ^ (z >> 27)) * m2
        z = z ^ (z >> 31)
        home = (z & mask.to(tl.uint64)).to(tl.int64)
        slot = tl.full([BLOCK], -1, tl.int64)
        searching = live
        # rounds: the host's bound on any key's distance from home (a loop that stopped once
        # every lane was done measured the same on the H200)
        for r in range(rounds):
            pos = (home + r) & mask
            k = tl.load(keys_ptr + pos, mask=searching, other=-1)
            found = searching & (k == key)
            v = tl.load(vals_ptr + pos, mask=found, other=-1)
            slot = tl.where(found, v.to(tl.int64), slot)
            searching = searching & (k != key) & (k != -1)
        cols = tl.arange(0, DIM)
        in_row = (cols < dim)[None, :]
        on_dev = live & (slot >= 0) & (slot < device_rows)
        on_ram = live & (slot >= device_rows)
        a = tl.load(slab_ptr + slot[:, None] * dim + cols[None, :], mask=on_dev[:, None] & in_row,
                    other=0)
        b = tl.load(ram_ptr + (slot - device_rows)[:, None] * dim + cols[None, :],
                    mask=on_ram[:, None] & in_row, other=0)
        row = tl.where(on_dev[:, None], a, b)
        tl.store(out_ptr + offs[:, None] * dim + cols[None, :], row, mask=live[:, None] & in_row)
        miss = live & (slot < 0)
        count = tl.sum(miss.to(tl.int64), axis=0)
        if count > 0:
            base = tl.atomic_add(scratch_ptr, count)
            at = base + tl.cumsum(miss.to(tl.int64), axis=0) - 1
            keep = miss & (at < miss_cap)
            pairs = scratch_ptr + 1 + logged
            tl.store(pairs + 2 * at, offs, mask=keep)
            tl.store(pairs + 1 + 2 * at, key, mask=keep)

    @triton.jit(do_not_specialize=["n"])
    def scatter_kernel(rows_ptr, positions_ptr, which_ptr, out_ptr, n, dim,
                       BLOCK: tl.constexpr, DIM: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        live = offs < n
        at = tl.load(positions_ptr + offs, mask=live, other=0)
        src = tl.load(which_ptr + offs, mask=live, other=0)
        cols = tl.arange(0, DIM)
        in_row = live[:, None] & (cols < dim)[None, :]
        row = tl.load(rows_ptr + src[:, None] * dim + cols[None, :], mask=in_row)
        tl.store(out_ptr + at[:, None] * dim + cols[None, :], row, mask=in_row)

    @triton.jit(do_not_specialize=["n"])
    def write_kernel(slots_ptr, rows_ptr, slab_ptr, ram_ptr, n, device_rows, dim,
                     BLOCK: tl.constexpr, DIM: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        live = offs < n
        slot = tl.load(slots_ptr + offs, mask=live, other=-1)
        cols = tl.arange(0, DIM)
        in_row = (cols < dim)[None, :]
        row = tl.load(rows_ptr + offs[:, None] * dim + cols[None, :], mask=live[:, None] & in_row)
        on_dev = live & (slot >= 0) & (slot < device_rows)
        on_ram = live & (slot >= device_rows)
        tl.store(slab_ptr + slot[:, None] * dim + cols[None, :], row, mask=on_dev[:, None] & in_row)
        tl.store(ram_ptr + (slot - device_rows)[:, None] * dim + cols[None, :], row,
                 mask=on_ram[:, None] & in_row)

    return lookup_kernel, write_kernel, scatter_kernel


def launch(kernel, compiled: dict, grid, args: tuple, constexprs: dict, stream: int | None = None):
    """``kernel[grid](*args, **constexprs)``; once compiled, through the compiled kernel, on
    ``stream`` (the handle of the current stream, which it then need not look up) if given.

    Triton's launch of a ``@jit`` function binds and specializes every argument and
    looks its compiled kernel up again on each call: 33-44 us of host time for the
    lookup kernel on the H200's host, where ``F.embedding``'s whole call took 17-19 us. A
    tier always passes the same kinds of arguments (its own slabs and index, fresh
    outputs aligned by torch's allocator, ids aligned by the caller, unspecialized
    counts), so the kernel compiled at its first lookup serves every later one, kept
    in ``compiled`` (one dict a tier). A Triton whose compiled kernels take their
    arguments otherwise (a ``TypeError`` before anything runs) keeps the plain launch.
    """
    fast = compiled.get(kernel)
    if fast:
        try:
            if stream is None:
                fast[grid](*args, *constexprs.values())
            else:
                fast[grid](*args, *constexprs.values(), stream=stream)
            return
        except TypeError:
            compiled[kernel] = False
    made = kernel[grid](*args, **constexprs)
    if fast is None:
        compiled[kernel] = made if hasattr(made, "__getitem__") else False


def _over_ids(kernel, compiled: dict | None, n: int, dim: int, args: tuple, fast: bool,
              stream: int | None = None):
    """``kernel`` over ``n`` items in blocks of ``BLOCK_IDS``: through :func:`launch` where
    ``fast`` (the arguments are of the kinds the compiled kernel assumes), else Triton's own."""
    # plain arithmetic: Triton 3.6's cdiv and next_power_of_2 are constexpr functions, whose
    # host-side call unwraps every argument (two of them a launch)
    constexprs = {"BLOCK": BLOCK_IDS, "DIM": 1 << (dim - 1).bit_length()}
    grid = (-(-n // BLOCK_IDS), 1, 1)     # the compiled kernel takes all three
    if fast and compiled is not None:
        launch(kernel, compiled, grid, args, constexprs, stream)
    else:
        kernel[grid](*args, **constexprs)


def lookup(ids, keys, vals, rounds: int, slab, ram: HostPointer, device_rows: int, out, scratch,
           sample_start: int, sample_stride: int, logged: int, compiled: dict | None = None,
           stream: int | None = None):
    """Rows of the int64 CUDA tensor ``ids`` into ``out`` (``len(ids) x dim``), on the current
    stream. ``scratch`` (int64, its first element zeroed by the caller) receives
    ``[count | ids[sample_start::sample_stride] (logged of them) | pos0, id0, pos1, id1, ...]``:
    the ids in neither slab (their rows in ``out`` are zeros), as many pairs as fit.
    ``compiled``: the caller's cache of the compiled kernel (``launch``), for a caller
    that passes the same slab, RAM slab and index every time; ``stream``: the current
    stream's handle, if the caller has it."""
    kernel, _, _ = _kernels()
    # shape[0], not len(): a tensor's __len__ is a Python method (four calls a lookup were)
    n, dim, room = ids.shape[0], out.shape[1], scratch.shape[0]
    if n == 0:
        return
    if ids.data_ptr() % 16:            # the compiled kernel reads ids as 16-byte aligned
        ids = ids.clone()
    args = (ids, keys, vals, slab, ram, out, scratch, n, keys.shape[0] - 1, rounds, device_rows,
            dim, (room - 1 - logged) // 2, M1, M2, sample_start, sample_stride, logged)
    # counts past int32 would compile another kernel
    _over_ids(kernel, compiled, n, dim, args, room < 1 << 31, stream)


def _aligned(*tensors) -> bool:
    return not any(t.data_ptr() % 16 for t in tensors)


def scatter_rows(rows, positions, which, out, compiled: dict | None = None):
    """``out[positions[k]] = rows[which[k]]`` (CUDA tensors; int64 indices), on the current
    stream. ``compiled``: as :func:`lookup`'s."""
    _, _, kernel = _kernels()
    n, dim = len(positions), out.shape[1]
    if n == 0:
        return
    _over_ids(kernel, compiled, n, dim, (rows, positions, which, out, n, dim),
              n < 1 << 31 and _aligned(rows, positions, which, out))


def write_rows(slots, rows, slab, ram: HostPointer, device_rows: int, compiled: dict | None = None):
    """``rows[k]`` into physical slot ``slots[k]`` (int64 CUDA tensors), on the current stream.
    ``compiled``: as :func:`lookup`'s."""
    _, kernel, _ = _kernels()
    n, dim = len(slots), rows.shape[1]
    if n == 0:
        return
    _over_ids(kernel, compiled, n, dim, (slots, rows, slab, ram, n, device_rows, dim),
              n < 1 << 31 and _aligned(slots, rows))
