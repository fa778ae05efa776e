"""A GPU software cache of an embedding table, after ColossalAI's, as a baseline for bench_gpu.py.

The design is that of ColossalAI's ``CachedParamMgr`` behind ``CachedEmbeddingBag``
(hpcaitech/ColossalAI, ``colossalai/legacy/nn/parallel/layers/cache_embedding/cache_mgr.py``),
written here from its description:

- the whole table stays in pinned CPU memory; a CUDA tensor holds ``cache_rows`` of its rows;
- the map from row id to cache slot is a dense tensor over every id, kept on the GPU, beside its
  inverse (slot -> id) and a use count per slot (LFU);
- every lookup is synchronous: the batch's unique ids and their counts, the ids not cached
  picked out on the GPU, as many least-used slots evicted as free slots are missing (never one
  the batch reads), the missed rows gathered from the pinned table by the CPU and copied in,
  the maps updated, the counts added to the slots' uses, then one gather from the cache.

Differences: ColossalAI also keeps ``idx_map``, a dense id -> row permutation for its
dataset-frequency strategy; under LFU without reordering it is the identity, so it is left out
(one gather less a lookup). Evicted rows are not copied back: the table is frozen here
(inference), where ColossalAI's write-back would copy rows that did not change.
"""
import torch
import torch.nn.functional as F
from torch import nn

FREE = torch.iinfo(torch.int64).max    # the use count of a free or protected slot: never evicted


class SoftwareCacheEmbedding(nn.Module):
    """``forward(ids)`` -> ``table[ids]`` on ``device``, served from a cache of ``cache_rows`` rows.

    ``table``: a CPU tensor ``[num_rows, dim]`` (pinned here when ``device`` is CUDA). A batch
    may hold at most ``cache_rows`` distinct ids (all of them must be cached at once).
    """

    def __init__(self, table, cache_rows: int, device):
        super().__init__()
        device = torch.device(device)
        num_rows, dim = table.shape
        if not 0 < cache_rows <= num_rows:
            raise ValueError(f"cache_rows must be in [1, {num_rows}], got {cache_rows}")
        self.host = table.pin_memory() if device.type == "cuda" and not table.is_pinned() else table
        self.cache = torch.zeros((cache_rows, dim), dtype=table.dtype, device=device)
        self.slot_of = torch.full((num_rows,), -1, dtype=torch.int64, device=device)
        self.id_of = torch.full((cache_rows,), -1, dtype=torch.int64, device=device)
        self.uses = torch.full((cache_rows,), FREE, dtype=torch.int64, device=device)
        self.free = cache_rows
        self._staging = torch.empty((0, dim), dtype=table.dtype)
        self.ids_seen = torch.zeros((), dtype=torch.int64, device=device)
        self.ids_missed = torch.zeros((), dtype=torch.int64, device=device)

    @property
    def num_embeddings(self) -> int:
        return self.host.shape[0]

    @property
    def embedding_dim(self) -> int:
        return self.host.shape[1]

    @torch.no_grad()
    def forward(self, ids):
        ids = torch.as_tensor(ids).to(self.cache.device, torch.int64, non_blocking=True)
        uniq, inverse, counts = torch.unique(ids.reshape(-1), return_inverse=True,
                                             return_counts=True)
        if uniq.numel() > self.cache.shape[0]:
            raise ValueError(f"a batch of {uniq.numel()} distinct ids does not fit a cache of "
                             f"{self.cache.shape[0]} rows")
        slots = self.slot_of[uniq]
        missing = slots < 0
        missed = uniq[missing]                   # its size: the one read back to the host
        self.ids_seen += ids.numel()
        self.ids_missed += counts[missing].sum()
        if missed.numel():
            self._admit(missed, slots)
            slots = self.slot_of[uniq]
        self.uses.index_add_(0, slots, counts)
        return F.embedding(slots[inverse], self.cache).view(ids.shape + (self.embedding_dim,))

    def _admit(self, missed, slots):
        n = missed.numel()
        evict = n - self.free
        if evict > 0:
            held = slots[slots >= 0]             # the batch's cached rows stay
            kept = self.uses[held]
            self.uses.index_fill_(0, held, FREE)
            victims = torch.topk(self.uses, evict, largest=False).indices
            self.uses.index_copy_(0, held, kept)
            self.slot_of[self.id_of[victims]] = -1
            self.id_of[victims] = -1
            self.free += evict
        target = torch.nonzero(self.id_of < 0).squeeze(1)[:n]
        if self._staging.shape[0] < n:
            self._staging = torch.empty((n, self.embedding_dim), dtype=self.host.dtype,
                                        pin_memory=self.cache.is_cuda)
        rows = self._staging[:n]
        # the CPU gathers the missed rows from the pinned table; one copy brings them over (the
        # staging buffer is free again: reading `missed` back waited for the last copy)
        torch.index_select(self.host, 0, missed.cpu(), out=rows)
        self.cache.index_copy_(0, target, rows.to(self.cache.device, non_blocking=True))
        self.id_of[target] = missed
        self.slot_of[missed] = target
        self.uses[target] = 0
        self.free -= n

    def miss_ratio(self) -> float:
        """Ids looked up that were not cached, over all ids looked up (since ``reset_counts``)."""
        return float(self.ids_missed) / max(1, int(self.ids_seen))

    def reset_counts(self):
        self.ids_seen.zero_()
        self.ids_missed.zero_()
