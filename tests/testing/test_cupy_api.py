"""The committed list of CuPy's names and keywords is the installed CuPy's (when one is)."""

import pytest

from xpnet.testing import cupy_api, make_cupy_api


def test_committed_list_matches_the_installed_cupy():
    try:
        import cupy  # noqa: F401  (imports without a GPU)
    except ImportError:
        pytest.skip("CuPy is not installed (pip install cupy-cuda12x to check the list)")
    from xpnet.testing import fakecupy

    if isinstance(cupy, fakecupy.FakeCuPy):
        pytest.skip("only the fake device is importable as cupy here")
    api = make_cupy_api.collect()
    committed = dict(
        version=cupy_api.VERSION, ufuncs=cupy_api.UFUNCS, functions=cupy_api.FUNCTIONS,
        ndarray=cupy_api.NDARRAY, dotted=cupy_api.DOTTED,
    )
    assert api == committed, "regenerate: python -m xpnet.testing.make_cupy_api > xpnet/testing/cupy_api.py"


def test_rendering_round_trips():
    api = dict(
        version=cupy_api.VERSION, ufuncs=cupy_api.UFUNCS, functions=cupy_api.FUNCTIONS,
        ndarray=cupy_api.NDARRAY, dotted=cupy_api.DOTTED,
    )
    namespace = {}
    exec(make_cupy_api.render(api), namespace)
    assert namespace["FUNCTIONS"] == cupy_api.FUNCTIONS and namespace["UFUNCS"] == cupy_api.UFUNCS
    assert namespace["NDARRAY"] == cupy_api.NDARRAY and namespace["DOTTED"] == cupy_api.DOTTED
    assert {"matmul", "einsum", "copyto", "asarray"} <= set(cupy_api.FUNCTIONS)
    assert cupy_api.UFUNCS["add"] == ("out", "dtype", "casting")
