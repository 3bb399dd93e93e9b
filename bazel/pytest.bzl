"""`pytest_test(name, ...)`: the `py_test` of tests/NAME.py, run under pytest by
tests/run_pytest.py (every test file's target is one; keyword arguments pass through)."""

def pytest_test(name, **kwargs):
    src = "tests/%s.py" % name
    native.py_test(
        name = name,
        srcs = [src, "tests/run_pytest.py"],
        args = ["$(location %s)" % src],
        main = "tests/run_pytest.py",
        **kwargs
    )
