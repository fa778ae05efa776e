"""The MemoryTier contract (tierstore.testing.tier_tests) on each tier."""
import pytest

from tierstore.testing.tier_tests import DeviceLookupTierTests, HostLookupTierTests
from tierstore.tiers.base import MemoryTier
from tierstore.tiers.memory import HostMemory


class TestHostMemory(HostLookupTierTests):
    def make_tier(self, device_rows, ram_rows, dim, dtype):
        tier = HostMemory(device_rows, ram_rows, dim, dtype)
        assert isinstance(tier, MemoryTier)
        return tier


class TestHostMemoryByIndex(DeviceLookupTierTests):
    """The same tier's lookups through its index (large lookups on device="cpu")."""

    def make_tier(self, device_rows, ram_rows, dim, dtype):
        return HostMemory(device_rows, ram_rows, dim, dtype)


class TestCudaMemory(DeviceLookupTierTests):
    def make_tier(self, device_rows, ram_rows, dim, dtype):
        torch = pytest.importorskip("torch")
        if not torch.cuda.is_available():
            pytest.skip("no CUDA device")
        from tierstore.tiers.cuda import CudaMemory

        tier = CudaMemory(device_rows, ram_rows, dim, dtype, "cuda")
        assert isinstance(tier, MemoryTier)
        return tier
