"""validation.check_int: the one integer check behind config, codec, hasher and salvage options."""
import numpy as np
import pytest

from tierstore.errors import ConfigError
from tierstore.validation import check_int


def test_accepts_ints_within_bounds_and_returns_python_ints():
    assert check_int("n", 3, 1, 5) == 3
    got = check_int("n", np.int32(7), 0)
    assert got == 7 and type(got) is int
    assert check_int("n", None, 1, none_ok=True) is None


@pytest.mark.parametrize("value", [True, np.bool_(True), 2.0, "2", None, 0, 6])
def test_refuses_the_rest_with_its_name_and_value(value):
    with pytest.raises(ConfigError, match=r"^n must be an int from 1 to 5, got ") as info:
        check_int("n", value, 1, 5)
    assert isinstance(info.value, ValueError) and repr(value) in str(info.value)


def test_wording_of_each_bound_and_the_callers_own():
    for kwargs, bad, text in (({"low": 1}, 0, "an int >= 1"), ({"high": 9}, 10, "an int <= 9"),
                              ({}, 1.5, "an int"), ({"low": 0, "none_ok": True}, -1, "None or an int >= 0"),
                              ({"low": 1, "expected": "a positive int"}, 0, "a positive int")):
        with pytest.raises(ConfigError, match=f"^x must be {text}, got {bad}$"):
            check_int("x", bad, **kwargs)
