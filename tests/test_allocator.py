"""The allocator setting that keeps long-running services' resident memory flat."""

import platform

from ffhquv.server import tune_allocator


def test_tune_allocator_on_glibc_and_harmless_twice():
    ok = tune_allocator()
    assert ok is (platform.libc_ver()[0] == "glibc")
    assert tune_allocator() is ok  # a second call (a restarted server in one process) is fine
