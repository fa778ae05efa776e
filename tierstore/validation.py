"""Checks at the public edge: ids and rows become clean numpy arrays or a clear error."""
from __future__ import annotations

import numbers

import numpy as np

from .errors import ConfigError, IdOutOfRangeError, IdTypeError, NonFiniteRowError, RowShapeError
from .kernels.batch import any_nonfinite_half_row, any_nonfinite_row, first_out_of_range


def is_torch_tensor(x) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "detach")


def as_id_array(ids, num_rows: int, check_range: bool = True) -> np.ndarray:
    """Row ids as an int64 array of the caller's shape, every one in ``[0, num_rows)``.

    ``check_range=False`` leaves out the pass that checks the int64 ids against the range
    (``check_id_range``; Python ints and unsigned ids beyond int64 are still checked), for a
    caller that checks instead the ids it does not find in memory, as an id outside the
    table never is found."""
    if is_torch_tensor(ids):
        # an empty float tensor (torch.tensor([])) is no ids, as an empty list is
        if ids.numel() and (ids.is_floating_point() or ids.is_complex()) or \
                str(ids.dtype) == "torch.bool":
            raise IdTypeError(f"row ids must be integers, got a tensor of {ids.dtype}")
        ids = ids.detach().cpu().numpy()
    arr = _as_array(ids)
    if arr.dtype == object:
        flat = arr.reshape(-1)
        for k, value in enumerate(flat):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise IdTypeError(f"row ids must be integers, got {type(value).__name__} at position {k}")
            if not 0 <= value < num_rows:
                raise IdOutOfRangeError(f"row id {value} at position {k} is outside [0, {num_rows})")
        arr = arr.astype(np.int64)
    if arr.dtype.kind not in "iu":
        raise IdTypeError(f"row ids must be integers, got dtype {arr.dtype}")
    if arr.dtype.kind == "u" and arr.size and arr.max() > np.iinfo(np.int64).max:
        k = int(np.argmax(arr > np.iinfo(np.int64).max))
        raise IdOutOfRangeError(
            f"row id {arr.reshape(-1)[k]} at position {k} is outside [0, {num_rows})")
    out = arr.astype(np.int64, copy=False)
    if check_range:
        check_id_range(out, num_rows)
    return out


def check_id_range(ids: np.ndarray, num_rows: int):
    """An int64 array of ids, every one in ``[0, num_rows)``, else ``IdOutOfRangeError``
    naming the first."""
    bad = first_out_of_range(ids.reshape(-1), num_rows)
    if bad >= 0:
        raise IdOutOfRangeError(
            f"row id {ids.reshape(-1)[bad]} at position {bad} is outside [0, {num_rows})")


def as_id_tensor(ids, device):
    """Integer ids in a CUDA tensor as int64 on ``device``, left there: their range is checked
    on the host only where they miss the GPU's index, as an id outside the table always does."""
    kind = str(ids.dtype)
    if kind == "torch.int64" and ids.device == device:
        return ids          # integer tensors hold no autograd history: nothing to detach
    if ids.is_floating_point() or ids.is_complex() or kind == "torch.bool":
        raise IdTypeError(f"row ids must be integers, got a tensor of {ids.dtype}")
    return ids.detach().to(device=device).long()


def _as_array(ids) -> np.ndarray:
    """numpy's view of the ids; Python sequences keep their ints exact (no float64 detour)."""
    try:
        arr = np.asarray(ids)
    except ValueError:
        raise IdTypeError("row ids must form a rectangular array of integers") from None
    if arr.size == 0 and arr.dtype.kind == "f":
        return arr.astype(np.int64)     # [] and np.array([]) (float64): no ids, not float ids
    if isinstance(ids, np.ndarray):
        return arr
    if arr.dtype.kind == "f":
        return np.array(ids, dtype=object)
    return arr


def as_rows(rows, shape: tuple, dtype: np.dtype, allow_nonfinite: bool, what: str = "rows",
            row_ids=None, codec=None):
    """``rows`` as a C-contiguous array of ``shape`` and the store's dtype, finite after the
    cast (unless ``allow_nonfinite``) and within ``codec``'s range.

    ``row_ids`` names the rows in errors: the ids they are written to (an array, one id per
    row in order) or the first row of a contiguous run (an int); ``None``: their position."""
    if is_torch_tensor(rows):
        rows = rows.detach().cpu()
        if str(rows.dtype) == "torch.bfloat16":
            rows = rows.float()
        rows = rows.numpy()
    try:
        arr = np.asarray(rows)
    except ValueError:
        raise RowShapeError(f"{what} must form a rectangular array of shape {shape}") from None
    if arr.dtype.kind != "f":
        raise RowShapeError(f"{what} must be floating point, got dtype {arr.dtype}")
    if arr.shape != shape:
        raise RowShapeError(f"{what} must have shape {shape}, got {arr.shape}")
    with np.errstate(over="ignore"):
        cast = np.ascontiguousarray(arr, dtype=dtype)
    if not allow_nonfinite and cast.size:
        flat = cast.reshape(-1, shape[-1])
        bad = any_nonfinite_half_row(flat.view(np.uint16)) if flat.dtype == np.float16 \
            else any_nonfinite_row(flat)
        if bad >= 0:
            where = "" if arr.dtype == cast.dtype else f" (after casting {arr.dtype} to {dtype})"
            raise NonFiniteRowError(
                f"{what}: {_row_name(bad, row_ids)} holds NaN or Inf{where}; "
                "create the store with allow_nonfinite=True to allow them")
    if codec is not None and cast.size:
        bad = codec.first_unencodable(cast.reshape(-1, shape[-1]))
        if bad >= 0:
            raise NonFiniteRowError(f"{what}: {_row_name(bad, row_ids)} holds values beyond the "
                                    f"range of codec {codec.codec_id!r} (they would read back as NaN)")
    return cast


def _row_name(position: int, row_ids) -> str:
    if row_ids is None:
        return f"row {position}"
    if isinstance(row_ids, (int, np.integer)):
        return f"row {int(row_ids) + position}"
    ids = np.asarray(row_ids)
    index = ", ".join(str(int(i)) for i in np.unravel_index(position, ids.shape))
    return f"row id {int(ids.reshape(-1)[position])} (rows[{index}])"


def check_int(name: str, value, low: int | None = None, high: int | None = None, *,
              expected: str | None = None, none_ok: bool = False):
    """``value`` as an int in ``[low, high]`` (either bound left out: open), else ConfigError
    "``name`` must be ``expected``, got ``value``". A bool is not an int here; numpy integers
    are. With ``none_ok``, None passes (and is returned)."""
    if value is None and none_ok:
        return None
    if expected is None:
        bounds = (f" from {low} to {high}" if low is not None and high is not None
                  else f" >= {low}" if low is not None else f" <= {high}" if high is not None else "")
        expected = ("None or " if none_ok else "") + "an int" + bounds
    if (isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral)
            or (low is not None and value < low) or (high is not None and value > high)):
        raise ConfigError(f"{name} must be {expected}, got {value!r}")
    return int(value)
