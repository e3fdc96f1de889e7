"""The check runner the SDK scripts share: `@check` registers a function, `run()` calls each one,
prints `ok`/`FAIL` per check and `N passed, M failed` (which the Rust side looks for), and exits
non-zero if any failed."""

import sys
import traceback

_checks = []


def check(fn):
    _checks.append(fn)
    return fn


def run():
    passed = failed = 0
    for fn in _checks:
        try:
            fn()
            passed += 1
            print(f"ok   {fn.__name__}")
        except Exception:
            failed += 1
            print(f"FAIL {fn.__name__}")
            traceback.print_exc(file=sys.stdout)
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)
