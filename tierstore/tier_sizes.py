"""Fitting a store's memory tiers to its table and to the machine, before allocating them.

A tier larger than the table would only hold empty slots: capacities are clamped to
``num_rows`` (the device tier first). What remains must fit in the memory the machine has
available now (slabs in host memory plus the policy's bookkeeping); a configuration that
does not is refused with TiersTooLargeError rather than left to fail half way through
allocation (or to push the machine into swap).
"""
from __future__ import annotations

import dataclasses
import os

from .config import StoreConfig
from .errors import TiersTooLargeError

SAMPLE_SLOTS = 1 << 12    # the bookkeeping of this many slots is measured and scaled
BOOKKEEPING_MARGIN = 2    # hash tables round up to powers of two: up to twice the sample's rate


def fitted_config(config: StoreConfig, num_rows: int) -> StoreConfig:
    """``config`` with its tiers (and partitions) no larger than the table's ``num_rows``."""
    device = min(config.device_rows, num_rows)
    ram = min(config.ram_rows, num_rows - device)
    if (device, ram) == (config.device_rows, config.ram_rows):
        return config
    return dataclasses.replace(config, device_rows=device, ram_rows=ram,
                               partitions=min(config.partitions, device + ram))


def host_bytes(config: StoreConfig, row_bytes: int) -> int:
    """Host memory the tiers take when allocated: both slabs (on ``device="cuda"`` the
    device slab's host shadow, see tiers/cuda.py), their index, plus the policy's
    bookkeeping, estimated from a small sample."""
    from .policy.state import CacheState
    from .tiers.memory import index_bytes

    capacity = config.memory_rows
    slab_rows = capacity
    sample = min(capacity, SAMPLE_SLOTS)
    per_slot = CacheState.new(0, sample, config.policy).nbytes() / sample
    return (slab_rows * row_bytes + index_bytes(capacity)
            + int(BOOKKEEPING_MARGIN * per_slot * capacity))


def available_bytes() -> int | None:
    """Memory available to a new allocation without swapping (Linux: MemAvailable)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits(config: StoreConfig, row_bytes: int, path=None):
    """Raise TiersTooLargeError when the tiers of ``config`` cannot fit in available memory."""
    need = host_bytes(config, row_bytes)
    have = available_bytes()
    if have is not None and need > have:
        where = f"{path}: " if path is not None else ""
        raise TiersTooLargeError(
            f"{where}the memory tiers need about {need / 2**30:.2f} GiB of host memory "
            f"(device_rows={config.device_rows}, ram_rows={config.ram_rows}, {row_bytes}-byte "
            f"rows, with bookkeeping) but {have / 2**30:.2f} GiB is available; "
            "lower ram_rows or device_rows")
