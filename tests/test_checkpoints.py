"""The registry of the paper's optional checkpoints, status messages and strict loading."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from ffhquv import checkpoints as ck
from ffhquv.errors import PreconditionFailed

torch.set_num_threads(min(2, torch.get_num_threads()))

OFFICIAL = {
    "texgan": "texgan_model/texgan_ffhq_uv.pth",
    "deep3d": "deep3d_model/epoch_latest.pth",
    "arcface": "arcface_model/ms1mv3_arcface_r50_fp16_backbone.pth",
    "vgg": "vgg_model/vgg16.pt",
    "parsing": "parsing_model/79999_iter.pth",
    "parsing_resnet18": "resnet_model/resnet18-5c106cde.pth",
    "dlib_landmarks": "dlib_model/shape_predictor_68_face_landmarks.dat",
}


@pytest.fixture(autouse=True)
def _fresh_log_state(monkeypatch):
    monkeypatch.setattr(ck, "_logged", set())


def test_registry_paths_are_the_official_layout():
    assert {n: c.relpath for n, c in ck.REGISTRY.items()} == OFFICIAL


def test_find_and_status(tmp_path):
    root = tmp_path / "checkpoints"
    (root / "vgg_model").mkdir(parents=True)
    (root / "vgg_model" / "vgg16.pt").write_bytes(b"x")
    (root / "texgan_model").mkdir()  # folder without the file
    assert ck.find("vgg", root) == root / "vgg_model" / "vgg16.pt"
    assert ck.find("texgan", root) is None
    with pytest.raises(KeyError, match="unknown checkpoint 'nope'"):
        ck.find("nope", root)

    st = ck.status(root)
    assert set(st) == set(OFFICIAL)
    assert st["vgg"] == f"vgg16.pt found at {root / 'vgg_model' / 'vgg16.pt'}"
    assert st["texgan"] == (
        f"texgan_ffhq_uv.pth not found at {root / 'texgan_model' / 'texgan_ffhq_uv.pth'}: "
        "using the default texture path (photo unwrap + completion)")
    for name, rel in OFFICIAL.items():
        if name != "vgg":
            msg = st[name]
            assert msg.startswith(f"{rel.split('/')[-1]} not found at {root / rel}: "), msg
            assert len(msg.split(": ", 1)[1]) > 10  # names the default used instead
    assert "landmark" in st["parsing"] and "without the identity" in st["arcface"]
    assert "not needed" in st["parsing_resnet18"]


def test_status_without_a_checkpoints_dir(monkeypatch):
    monkeypatch.delenv("FFHQUV_CHECKPOINTS_DIR", raising=False)
    st = ck.status(None)
    assert st["deep3d"].startswith("epoch_latest.pth not found (no checkpoints directory set")
    assert "deep3d_model/epoch_latest.pth" in st["deep3d"]
    assert ck.find("deep3d") is None


def test_missing_files_are_logged_once(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="ffhquv.checkpoints")
    ck.status(tmp_path)
    ck.status(tmp_path)
    ck.load_optional("texgan", lambda p: 1 / 0, tmp_path)  # missing: loader never called
    texgan = [r for r in caplog.records if "texgan_ffhq_uv.pth" in r.getMessage()]
    assert len(texgan) == 1 and texgan[0].levelno == logging.WARNING
    resnet = [r for r in caplog.records if "resnet18-5c106cde.pth" in r.getMessage()]
    assert len(resnet) == 1 and resnet[0].levelno == logging.INFO  # not needed at inference
    assert len({r.getMessage() for r in caplog.records}) == len(OFFICIAL)


def test_load_optional(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="ffhquv.checkpoints")
    p = tmp_path / "deep3d_model" / "epoch_latest.pth"
    p.parent.mkdir()
    p.write_bytes(b"not a torch file at all")
    assert ck.load_optional("deep3d", ck.torch_load, tmp_path) is None
    (msg,) = [r.getMessage() for r in caplog.records]
    assert "epoch_latest.pth" in msg and "pickle-free" in msg and "landmark-fit" in msg
    torch.save({"net_recon": {}}, p)
    assert ck.load_optional("deep3d", ck.torch_load, tmp_path) == {"net_recon": {}}


def test_torch_load_refuses_pickled_objects(tmp_path):
    p = tmp_path / "x.pth"
    torch.save(nn.Linear(2, 2), p)  # a pickled module, not a state dict
    with pytest.raises(ck.CheckpointError, match="x.pth: cannot be read as a pickle-free"):
        ck.torch_load(p)
    with pytest.raises(ck.CheckpointError, match="no such file"):
        ck.torch_load(tmp_path / "absent.pth")
    assert issubclass(ck.CheckpointError, PreconditionFailed)


def test_torch_load_accepts_numpy_scalars_of_training_checkpoints(tmp_path):
    import numpy as np

    p = tmp_path / "epoch_latest.pth"
    torch.save({"net_recon": {"w": torch.ones(2)}, "epoch": np.int64(20),
                "lr": np.float64(1e-4), "mean": np.zeros(3, np.float32)}, p)
    got = ck.torch_load(p)
    assert int(got["epoch"]) == 20 and torch.equal(got["net_recon"]["w"], torch.ones(2))


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 4)
        self.bn = nn.BatchNorm1d(4)


def test_strict_loading_names_bad_keys():
    net = _Net()
    good = {k: torch.randn_like(v.float()).to(v.dtype) for k, v in net.state_dict().items()}
    ck.load_state_dict_strict(net, good, "f.pth")
    assert torch.equal(net.fc.weight, good["fc.weight"])

    missing = dict(good)
    del missing["bn.running_var"]
    with pytest.raises(ck.CheckpointError, match=r"f.pth: .*missing keys: bn.running_var"):
        ck.load_state_dict_strict(net, missing, "f.pth")

    extra = dict(good, **{"head.weight": torch.zeros(1)})
    with pytest.raises(ck.CheckpointError, match=r"unexpected keys: head.weight"):
        ck.load_state_dict_strict(net, extra, "f.pth")

    shape = dict(good, **{"fc.weight": torch.zeros(4, 5)})
    with pytest.raises(ck.CheckpointError,
                       match=r"shape mismatches: fc.weight: file \(4, 5\) vs network \(4, 3\)"):
        ck.load_state_dict_strict(net, shape, "f.pth")

    # num_batches_tracked is optional (older BatchNorm checkpoints lack it).
    no_nbt = {k: v for k, v in good.items() if not k.endswith("num_batches_tracked")}
    ck.load_state_dict_strict(net, no_nbt, "f.pth")
    with pytest.raises(ck.CheckpointError, match="expected a state dict"):
        ck.load_state_dict_strict(net, [1, 2], "f.pth")
