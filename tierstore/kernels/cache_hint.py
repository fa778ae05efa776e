"""A hint to the CPU from numba kernels: start loading a cache line that a later step reads.

A gather through an index waits on a cache miss per id (its bucket, its row); a kernel that
asks for the lines a few ids ahead has them arriving while it copies the current one, as
``np.take`` gets from the hardware's own prefetcher on plain index arrays. The hint changes
no value (LLVM's ``llvm.prefetch``, a no-op where the CPU has none).
"""
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

LINE_BYTES = 64


@intrinsic
def prefetch(typingctx, arr, index):
    """Start loading the line of ``arr[index]`` (``index`` an int for a 1-D array, a pair for
    a 2-D one) into every cache level, for a read."""
    if not isinstance(arr, types.Array):
        return None
    if isinstance(index, types.Integer):
        if arr.ndim != 1:
            return None
    elif not (isinstance(index, types.UniTuple) and isinstance(index.dtype, types.Integer)
              and index.count == arr.ndim):
        return None

    def codegen(context, builder, signature, args):
        aryty, indexty = signature.args
        ary = context.make_array(aryty)(context, builder, args[0])
        if isinstance(indexty, types.Integer):
            indices = [args[1]]
        else:
            indices = cgutils.unpack_tuple(builder, args[1], indexty.count)
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, indices, wraparound=False)
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]), "llvm.prefetch.p0")
        # (address, 0: a read, 3: keep in all levels, 1: data cache)
        builder.call(fn, [builder.bitcast(ptr, i8p), ir.Constant(i32, 0), ir.Constant(i32, 3),
                          ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return types.void(arr, index), codegen


@njit(cache=True, inline="always", _nrt=False)
def prefetch_row(rows, r):
    """Start loading every line of row ``r`` of the 2-D array ``rows``."""
    step = max(1, LINE_BYTES // rows.itemsize)
    for c in range(0, rows.shape[1], step):
        prefetch(rows, (r, c))
