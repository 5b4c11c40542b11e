"""BiSeNet face parsing: the face-parsing.PyTorch layout, loader, parse() and label mapping."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ffhquv.checkpoints import CheckpointError, find
from services.detector import bisenet as bs
from services.detector.masks import FaceParser, ParseLabel
from services.fitter.paper.resnet import resnet18

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="module")
def state() -> dict:
    torch.manual_seed(0)
    net = bs.BiSeNet()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.normal_(0, 1 / math.sqrt(m.weight[0].numel()), generator=g)
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1, generator=g)
                m.running_var.uniform_(0.5, 1.5, generator=g)
    return net.state_dict()


def test_layout_and_parameter_count(state):
    net = bs.BiSeNet()
    assert sum(p.numel() for p in net.parameters()) == 13_300_416
    expected = {"cp.resnet.conv1.weight": (64, 3, 7, 7),
                "cp.resnet.layer2.0.downsample.0.weight": (128, 64, 1, 1),
                "cp.resnet.layer4.1.bn2.running_var": (512,),
                "cp.arm16.conv.conv.weight": (128, 256, 3, 3),
                "cp.arm32.conv_atten.weight": (128, 128, 1, 1), "cp.arm32.bn_atten.bias": (128,),
                "cp.conv_head32.conv.weight": (128, 128, 3, 3),
                "cp.conv_avg.conv.weight": (128, 512, 1, 1), "cp.conv_avg.bn.weight": (128,),
                "ffm.convblk.conv.weight": (256, 256, 1, 1), "ffm.conv1.weight": (64, 256, 1, 1),
                "ffm.conv2.weight": (256, 64, 1, 1),
                "conv_out.conv.conv.weight": (256, 256, 3, 3),
                "conv_out.conv_out.weight": (19, 256, 1, 1),
                "conv_out16.conv_out.weight": (19, 64, 1, 1),
                "conv_out32.conv.bn.running_mean": (64,)}
    for k, shape in expected.items():
        assert tuple(state[k].shape) == shape, k
    # The trunk has torchvision resnet18 names (what resnet18-5c106cde.pth initialised).
    trunk = {k[len("cp.resnet."):] for k in state if k.startswith("cp.resnet.")}
    assert trunk == {k for k in resnet18(num_classes=1000).state_dict() if not k.startswith("fc.")}
    assert not any(k.startswith("sp.") for k in state)  # the spatial path is absent


def test_to_parse_labels():
    got = bs.to_parse_labels(np.arange(19, dtype=np.uint8))
    want = [0, 1, 2, 2, 3, 3, 0, 0, 0, 0, 4, 6, 5, 5, 0, 0, 0, 0, 0]
    assert got.dtype == np.uint8 and got.tolist() == want
    assert got[10] == ParseLabel.NOSE and got[11] == ParseLabel.MOUTH
    with pytest.raises(ValueError, match="0..18"):
        bs.to_parse_labels(np.array([19]))


def test_load_parse_and_backward(tmp_path, state, astronaut_rgb):
    root = tmp_path / "checkpoints"
    p = root / "parsing_model" / "79999_iter.pth"
    p.parent.mkdir(parents=True)
    torch.save(state, p)
    parser = bs.load_bisenet(find("parsing", root), "cpu")
    as_protocol: FaceParser = parser  # structural: name + __call__(crop) -> labels
    assert as_protocol.name == "bisenet" and callable(as_protocol)
    for k, v in state.items():
        assert torch.equal(parser.net.state_dict()[k], v), k

    crop = np.ascontiguousarray(astronaut_rgb[30:254, 150:374])  # 224 x 224, like the crop
    logits = parser.logits(crop)
    assert logits.shape == (224, 224, 19) and logits.dtype == np.float32
    labels = parser.parse(crop)
    assert labels.shape == (224, 224) and labels.dtype == np.uint8 and labels.max() <= 18
    np.testing.assert_array_equal(labels, logits.argmax(2))
    mapped = parser(crop)
    assert mapped.shape == (224, 224) and set(np.unique(mapped)) <= set(range(7))
    np.testing.assert_array_equal(mapped, bs.to_parse_labels(labels))
    with pytest.raises(ValueError, match="uint8"):
        parser.parse(crop.astype(np.float32))

    # Forward / backward of the raw network on a small input.
    net = bs.BiSeNet()
    net.load_state_dict(state)
    x = torch.rand(1, 3, 64, 64, requires_grad=True)
    outs = net.eval()(x)
    assert [tuple(o.shape) for o in outs] == [(1, 19, 64, 64)] * 3
    outs[0].logsumexp(1).mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_bad_state_dict(tmp_path, state):
    bad = {k: v for k, v in state.items() if k != "ffm.conv2.weight"}
    bad["ffm.conv3.weight"] = state["ffm.conv2.weight"]
    p = tmp_path / "79999_iter.pth"
    torch.save(bad, p)
    with pytest.raises(CheckpointError, match=r"79999_iter.pth: .*missing keys: ffm.conv2.weight"
                                              r".*unexpected keys: ffm.conv3.weight"):
        bs.load_bisenet(p)
