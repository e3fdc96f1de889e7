"""The small runner the SDK check scripts share: register checks, expect an exception, run them all
(once, or once per target) and report `N passed, M failed`, which the Rust tests read."""

import sys
import traceback

checks = []


def check(fn):
    checks.append(fn)
    return fn


def expect_raises(exc_type, fn):
    try:
        fn()
    except exc_type as e:
        return e
    raise AssertionError(f"expected {exc_type.__name__}")


def run(name, targets=None):
    """Runs every check (with each of `targets` as its argument, when given) and exits 0 only if all passed."""
    passed = failed = 0
    for target in targets or [None]:
        for fn in checks:
            label = f"{target:10} {fn.__name__}" if target is not None else fn.__name__
            try:
                fn(target) if target is not None else fn()
                passed += 1
                print(f"ok   {label}")
            except Exception:
                failed += 1
                print(f"FAIL {label}")
                traceback.print_exc(file=sys.stdout)
    print(f"{name}: {passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)
