"""numba kernels over plain arrays: no Python objects, no exceptions.

Callers validate at the public edge; kernels trust their inputs.

Small kernels called once per id (slot maps, sketch, the policy's hooks) are
compiled with ``_nrt=False``: they allocate nothing, and without it numba
adds two reference-count updates per array argument to every call, which
cost more than the work itself (about 15 ns per array, per call).
"""
