"""The runner the Python check scripts share (gateway/tests/openai_sdk.py, openai_sdk_providers.py,
cache_sdk.py, redact_sdk.py, guard_sdk.py, anthropic_sdk.py, responses_sdk.py, completions_sdk.py and
bench/tests/mock_sdk_check.py): register checks, run each once (or once per target), print
`ok NAME` or `FAIL NAME` with the traceback, then `N passed, M failed`, and exit non-zero when any
failed.

The Rust tests that launch the scripts put this folder on PYTHONPATH and read that last line.
"""

import sys
import time
import traceback

_checks = []


def check(fn):
    """Registers `fn` as a check, run with no arguments (or with each target, see `run`)."""
    _checks.append((fn.__name__, fn, True))
    return fn


def check_each(params):
    """Registers a check once per parameter, named `fn[param]` and run as `fn(param)`."""
    def register(fn):
        for param in params:
            _checks.append((f"{fn.__name__}[{param}]", lambda fn=fn, param=param: fn(param), False))
        return fn
    return register


def raises(exc_type, fn):
    """Calls `fn`, which must raise `exc_type`; returns the exception for further checks."""
    try:
        fn()
    except exc_type as e:
        return e
    raise AssertionError(f"expected {exc_type.__name__}")


def chat_stream(client, **request):
    """Streams a chat completion through `client` (the openai SDK's) with usage asked for, and
    returns its text pieces as (seconds since the call, text), its finish reasons, and its usage
    (None when none came)."""
    started = time.monotonic()
    pieces, finish, usage = [], [], None
    stream = client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **request)
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append((time.monotonic() - started, choice.delta.content))
            if choice.finish_reason:
                finish.append(choice.finish_reason)
    return pieces, finish, usage


def run(title=None, targets=None):
    """Runs every registered check in order and exits: 0 if all passed, 1 otherwise. With
    `targets`, each `@check` runs once per target, target by target, as `fn(target)` named
    `fn[target]` (a `check_each` check still runs once per its own parameter)."""
    runs = []
    for target in targets or [None]:
        for name, fn, per_target in _checks:
            if target is None:
                runs.append((name, fn))
            elif per_target:
                runs.append((f"{name}[{target}]", lambda fn=fn, target=target: fn(target)))
    if targets:
        runs += [(name, fn) for name, fn, per_target in _checks if not per_target]
    passed = failed = 0
    for name, fn in runs:
        try:
            fn()
            passed += 1
            print(f"ok   {name}")
        except Exception:
            failed += 1
            print(f"FAIL {name}")
            traceback.print_exc(file=sys.stdout)
    summary = f"{passed} passed, {failed} failed"
    print(f"{title}: {summary}" if title else summary)
    sys.exit(1 if failed else 0)
