"""torch is optional: imported on first use, with an install hint."""
import functools

import numpy as np


def torch_module():
    try:
        import torch
    except ImportError:
        raise ImportError(
            "this needs PyTorch: pip install 'tierstore[torch]' "
            "(or pip install torch first)") from None
    return torch


@functools.lru_cache(maxsize=None)
def torch_dtype(np_dtype):
    """The torch dtype of a numpy dtype (cached: the CUDA tier asks for each array it sends)."""
    return torch_module().from_numpy(np.empty(0, dtype=np_dtype)).dtype
