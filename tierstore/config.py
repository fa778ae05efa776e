"""Store configuration: a frozen, validated dataclass."""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from .errors import ConfigError
from .table import DTYPES  # noqa: F401  (tierstore.config.DTYPES)
from .validation import check_int

POLICIES = ("adaptive", "wtinylfu", "lru", "lfu")
_DEVICE_RE = re.compile(r"^(cpu|cuda(:\d+)?)$")


@dataclass(frozen=True)
class StoreConfig:
    """How a store is cached and opened: choices of this open, not properties of the table.

    What the table is (shape, dtype, codec, non-finite rule, init) is its
    :class:`~tierstore.table.TableFormat`, fixed at create and read from the store.

    ``device_rows`` and ``ram_rows`` are the capacities of the hot and warm
    tiers; every row also lives on disk. ``policy`` picks who stays in memory:
    ``"adaptive"`` (W-TinyLFU whose window is sized from two ghosts of recently
    evicted ids, the default), ``"wtinylfu"`` (fixed 1% window), ``"lru"`` or ``"lfu"``.
    The LMDB map starts at ``map_size`` bytes and doubles when full, up to
    ``max_map_size`` (``None``: no ceiling but the disk). Dirty rows evicted from
    memory wait in a write-back buffer until ``writeback_rows`` of them go to disk
    in one transaction (``None``: ``max(4096, memory_rows // 8)``), or ``flush()``.
    ``partitions`` splits the memory's bookkeeping into that many independent caches by a
    hash of the row id, each over its share of both tiers, planned on as many threads at
    once: for batches of tens of thousands of ids on a many-core host (a GPU's), at the cost
    of each partition deciding alone. Each needs at least one memory row.
    """

    device_rows: int = 1 << 14
    ram_rows: int = 1 << 18
    device: str = "cpu"
    policy: str = "adaptive"
    map_size: int = 1 << 28
    max_map_size: int | None = None
    sketch_width: int | None = None
    writeback_rows: int | None = None
    partitions: int = 1

    def __post_init__(self):
        def check(name, *bounds, **wording):
            object.__setattr__(self, name, check_int(name, getattr(self, name), *bounds, **wording))

        check("device_rows", 0, expected="a non-negative int")
        check("ram_rows", 0, expected="a non-negative int")
        if self.device_rows + self.ram_rows < 1:
            raise ConfigError("device_rows + ram_rows must be at least 1")
        if not isinstance(self.device, str) or not _DEVICE_RE.match(self.device):
            raise ConfigError(f"device must be 'cpu' or 'cuda[:n]', got {self.device!r}")
        if self.policy not in POLICIES:
            raise ConfigError(f"policy must be one of {POLICIES}, got {self.policy!r}")
        check("map_size", 1 << 20, expected="an int of at least 1 MiB")
        check("max_map_size", self.map_size, none_ok=True, expected="None or an int >= map_size")
        check("sketch_width", 16, none_ok=True)
        check("writeback_rows", 1, none_ok=True)
        memory = self.device_rows + self.ram_rows
        check("partitions", 1, memory, expected=f"an int from 1 to device_rows + ram_rows ({memory})")

    @property
    def memory_rows(self) -> int:
        return self.device_rows + self.ram_rows

    def to_dict(self) -> dict:
        """This config as plain data (for a checkpoint); :meth:`from_dict` rebuilds it."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, fields: dict) -> "StoreConfig":
        """A StoreConfig from plain data (a saved state). Saves made before the table's format
        was split from its config also hold ``codec`` and ``allow_nonfinite``: those are the
        table's, read from the store itself, and are left out here."""
        return cls(**{k: v for k, v in fields.items() if k not in _FORMAT_FIELDS})


_FORMAT_FIELDS = ("codec", "allow_nonfinite")
