"""triton_lookup.launch, the compiled-kernel shortcut, with stand-ins for Triton's objects (no GPU
needed): the first call goes through the @jit function and keeps what it compiled, later calls
launch that directly with every argument in order, and a compiled kernel that takes its
arguments otherwise sends this and every later call back to the @jit launch."""
from tierstore.tiers.triton_lookup import launch


class Compiled:
    def __init__(self, calls, fail=False):
        self.calls, self.fail = calls, fail

    def __getitem__(self, grid):
        def runner(*args, stream=None):
            if self.fail:
                raise TypeError("function takes exactly 9 arguments")
            self.calls.append(("compiled", grid, args) + ((stream,) if stream is not None else ()))
        return runner


class Jit:
    def __init__(self, fail=False):
        self.calls = []
        self.fail = fail

    def __getitem__(self, grid):
        def run(*args, **constexprs):
            self.calls.append(("jit", grid, args, constexprs))
            return Compiled(self.calls, self.fail)
        return run


def test_compiled_once_then_launched_directly():
    kernel, compiled = Jit(), {}
    launch(kernel, compiled, (4, 1, 1), ("ids", 7), {"BLOCK": 64, "DIM": 8})
    launch(kernel, compiled, (2, 1, 1), ("ids", 3), {"BLOCK": 64, "DIM": 8})
    assert kernel.calls == [("jit", (4, 1, 1), ("ids", 7), {"BLOCK": 64, "DIM": 8}),
                            ("compiled", (2, 1, 1), ("ids", 3, 64, 8))]


def test_the_callers_stream_goes_to_the_compiled_kernel():
    kernel, compiled = Jit(), {}
    launch(kernel, compiled, (4, 1, 1), ("ids", 7), {"BLOCK": 64}, stream=1234)
    launch(kernel, compiled, (2, 1, 1), ("ids", 3), {"BLOCK": 64}, stream=1234)
    launch(kernel, compiled, (2, 1, 1), ("ids", 5), {"BLOCK": 64})
    assert kernel.calls[1:] == [("compiled", (2, 1, 1), ("ids", 3, 64), 1234),
                                ("compiled", (2, 1, 1), ("ids", 5, 64))]


def test_a_compiled_kernel_that_refuses_its_arguments_falls_back_for_good():
    kernel, compiled = Jit(fail=True), {}
    for n in (1, 2, 3):
        launch(kernel, compiled, (n, 1, 1), ("ids", n), {"BLOCK": 64})
    assert [c[0] for c in kernel.calls] == ["jit", "jit", "jit"]
    assert compiled[kernel] is False


def test_kernels_are_kept_apart():
    a, b, compiled = Jit(), Jit(), {}
    launch(a, compiled, (1, 1, 1), (1,), {})
    launch(b, compiled, (1, 1, 1), (2,), {})
    launch(a, compiled, (1, 1, 1), (3,), {})
    assert [c[0] for c in a.calls] == ["jit", "compiled"] and [c[0] for c in b.calls] == ["jit"]


def test_blocks_over_ids_take_the_compiled_kernel_only_where_allowed():
    from tierstore.tiers.triton_lookup import BLOCK_IDS, _over_ids

    kernel, compiled = Jit(), {}
    for fast in (True, True, False):
        _over_ids(kernel, compiled, 3 * BLOCK_IDS + 1, 12, ("ids",), fast)
    assert kernel.calls == [("jit", (4, 1, 1), ("ids",), {"BLOCK": BLOCK_IDS, "DIM": 16}),
                            ("compiled", (4, 1, 1), ("ids", BLOCK_IDS, 16)),
                            ("jit", (4, 1, 1), ("ids",), {"BLOCK": BLOCK_IDS, "DIM": 16})]
