"""The allocator setting that keeps long-running services' resident memory flat."""

import platform

from ffhquv.server import tune_allocator


def test_tune_allocator_on_glibc_and_harmless_twice():
    ok = tune_allocator()
    assert ok is (platform.libc_ver()[0] == "glibc")
    assert tune_allocator() is ok  # a second call (a restarted server in one process) is fine


def test_large_freed_arrays_kept_unless_the_user_set_malloc(monkeypatch):
    from ffhquv.allocator import keep_large_freed

    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert keep_large_freed() is False  # the user's setting wins
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    for k in [k for k in __import__("os").environ if k.startswith("MALLOC_")]:
        monkeypatch.delenv(k)
    assert keep_large_freed() is (platform.libc_ver()[0] == "glibc")
    tune_allocator()  # what the CPU services set after it
