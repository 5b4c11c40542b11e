"""How threads wait for the GPU (ffhquv.cuda): the setting is read once, checked, and a
machine without a CUDA runtime is left as it is."""

import pytest
import torch

import ffhquv.cuda as cw


@pytest.fixture
def fresh(monkeypatch):
    monkeypatch.setattr(cw, "_done", None)
    return monkeypatch


def test_unknown_wait_mode_is_refused_with_its_choices(fresh):
    fresh.setenv("FFHQUV_CUDA_WAIT", "sleepy")
    with pytest.raises(ValueError, match="block.*spin|auto.*block"):
        cw.configure_waits()


def test_waits_set_once_and_left_alone_without_cuda(fresh):
    fresh.setenv("FFHQUV_CUDA_WAIT", "block")
    first = cw.configure_waits()
    if not torch.cuda.is_available():
        assert first == "unchanged"  # no CUDA runtime loaded: nothing to set
    else:
        assert first in ("block", "unchanged")
    fresh.setenv("FFHQUV_CUDA_WAIT", "spin")
    assert cw.configure_waits() == first  # once per process: later calls report the first
