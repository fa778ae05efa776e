"""torch is optional: imported on first use, with an install hint."""


def torch_module():
    try:
        import torch
    except ImportError:
        raise ImportError(
            "this needs PyTorch: pip install 'tierstore[torch]' "
            "(or pip install torch first)") from None
    return torch
