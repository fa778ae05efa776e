"""numba kernels over plain arrays: no Python objects, no exceptions.

Callers validate at the public edge; kernels trust their inputs.
"""
