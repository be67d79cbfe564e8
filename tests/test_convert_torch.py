"""Tests of the PyTorch -> Keras ResNet and VGG converter: logits parity with torch, checkpoint formats, errors.

The torch ResNets and VGGs are written here (torchvision's layout and module names, v1.5
bottlenecks, VGG's adaptive 7x7 pooling) so that the tests need torch but not torchvision; so are
Hara et al.'s 3D ResNets (3D-ResNets-PyTorch's layout, shortcuts A and B) for the video targets.
"""

import argparse
import os
import sys

import keras
import numpy as np
import pytest
import torch
from conftest import assert_one_error_line, run_commands
from torch import nn

from sskt_tf import convert_torch, sources
from sskt_tf.errors import UserError

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin, width, stride, downsample):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        self.downsample = downsample

    def forward(self, x):
        y = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(y + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin, width, stride, downsample):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)  # v1.5: stride here
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, width * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(width * 4)
        self.relu = nn.ReLU()
        self.downsample = downsample

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + (x if self.downsample is None else self.downsample(x)))


class TorchResNet(nn.Module):
    def __init__(self, block, layers, num_classes):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = 64
        for i, (width, n) in enumerate(zip((64, 128, 256, 512), layers), start=1):
            blocks = []
            for b in range(n):
                stride = 2 if (i > 1 and b == 0) else 1
                downsample = None
                if stride != 1 or cin != width * block.expansion:
                    downsample = nn.Sequential(
                        nn.Conv2d(cin, width * block.expansion, 1, stride, bias=False),
                        nn.BatchNorm2d(width * block.expansion),
                    )
                blocks.append(block(cin, width, stride, downsample))
                cin = width * block.expansion
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


ARCHS = {"resnet18": (BasicBlock, (2, 2, 2, 2)), "resnet50": (Bottleneck, (3, 4, 6, 3))}


def random_torch_resnet(arch, num_classes, seed):
    """A torch ResNet with random weights and non-trivial BatchNorm statistics, in eval mode.

    Like a trained network, the last BatchNorm of each residual branch has small scales and the
    running statistics roughly fit the data, so that the logits stay O(10) through 16 blocks
    (random statistics blow them up to O(100), where float32 round-off alone exceeds 1e-4).
    """
    torch.manual_seed(seed)
    net = TorchResNet(*ARCHS[arch], num_classes)
    with torch.no_grad():
        last_bn = "bn3" if ARCHS[arch][0] is Bottleneck else "bn2"
        for name, m in net.named_modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(*((0.1, 0.5) if name.endswith(last_bn) else (0.5, 1.5)))
                m.bias.normal_(0.0, 0.2)
                m.momentum = None  # running statistics = the cumulative average over the batch below
        net.train()
        net(torch.randn(8, 3, 64, 64))
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.add_(torch.randn_like(m.running_mean) * 0.2 * m.running_var.sqrt())
                m.running_var.mul_(torch.empty_like(m.running_var).uniform_(0.5, 2.0))
        net.fc.weight.mul_(5.0)  # logits of +-10 or so, as a trained classifier's
        net.fc.bias.normal_(0.0, 0.5)
    return net.eval()


def torch_logits(net, images):
    """torchvision's preprocessing: (x / 255 - mean) / std, NCHW."""
    x = (images / 255.0 - MEAN) / STD
    with torch.no_grad():
        return net(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()


def images(shape, seed=0):
    return np.random.RandomState(seed).uniform(0, 255, shape).astype(np.float32)


# arch -> classes, image batch (even sizes: where Keras' "same" padding would differ from torch's), seed.
SETTINGS = {"resnet18": (10, (2, 112, 96, 3), 0), "resnet50": (365, (2, 64, 64, 3), 1)}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """arch -> a random torch ResNet saved as a plain `.pth` state dict and as a Places365-style `.pth.tar`."""
    made = {}

    def get(arch):
        if arch not in made:
            num_classes, shape, seed = SETTINGS[arch]
            net = random_torch_resnet(arch, num_classes, seed)
            folder = tmp_path_factory.mktemp(arch)
            pth, tar = folder / f"{arch}.pth", folder / f"{arch}_places365.pth.tar"
            torch.save(net.state_dict(), pth)
            # As the CSAIL file: a checkpoint dict, DataParallel's "module." prefixes, the pre-1.6 format.
            state_dict = {f"module.{k}": v for k, v in net.state_dict().items()}
            torch.save({"epoch": 90, "arch": arch, "state_dict": state_dict}, tar, _use_new_zipfile_serialization=False)
            x = images(shape, seed)
            made[arch] = argparse.Namespace(
                arch=arch, num_classes=num_classes, net=net, pth=str(pth), tar=str(tar), x=x,
                logits=torch_logits(net, x),
            )
        return made[arch]

    return get


@pytest.mark.parametrize("arch", sorted(SETTINGS))
@pytest.mark.parametrize("fmt", ["pth", "tar"])
def test_converted_logits_match_torch(checkpoints, arch, fmt):
    ckpt = checkpoints(arch)
    state_dict = convert_torch.load_state_dict(getattr(ckpt, fmt))
    model = convert_torch.convert(state_dict, arch, ckpt.num_classes)
    logits = model(ckpt.x).numpy()
    diff = np.abs(logits - ckpt.logits).max()
    print(f"{arch} {fmt}: max |keras - torch| = {diff:.2e} (largest |logit| {np.abs(ckpt.logits).max():.2f})")
    assert diff < 1e-4
    # The logits must vary across images and classes for the comparison to mean anything.
    assert ckpt.logits.std() > 0.1 and np.abs(ckpt.logits[0] - ckpt.logits[1]).max() > 0.1
    assert model.input_shape == (None, None, None, 3) and model.output_shape == (None, ckpt.num_classes)


def test_cli_writes_a_source_that_build_source_accepts(checkpoints, tmp_path, capsys):
    ckpt = checkpoints("resnet18")
    out = tmp_path / "nested" / "resnet18_places365.keras"
    convert_torch.convert_checkpoint(ckpt.tar, str(out), "resnet18", num_classes=10)
    assert f"wrote {out}: resnet18, 10 classes" in capsys.readouterr().out
    reloaded = keras.saving.load_model(str(out), compile=False)
    np.testing.assert_allclose(reloaded(ckpt.x).numpy(), ckpt.logits, atol=1e-4, rtol=0)
    # Free H and W: the source follows --source_scale (48 px targets -> 112 px).
    source = sources.build_source(str(out), (48, 48), source_scale=7 / 3)
    assert source.image_size == (112, 112) and source.num_classes == 10
    x = images((2, 48, 48, 3), seed=3)
    resized = keras.ops.convert_to_numpy(keras.ops.image.resize(x, (112, 112), interpolation="bilinear"))
    np.testing.assert_allclose(source(x).numpy(), torch_logits(ckpt.net, resized), atol=1e-4, rtol=0)
    # The reference's --source_bn=batch clones the network layer by layer.
    assert tuple(sources.build_source(str(out), (48, 48), source_bn="batch")(x).shape) == (2, 10)
    # An existing output is never replaced without --overwrite: the file stays as it was.
    before = out.read_bytes()
    with pytest.raises(UserError, match="exists; pass --overwrite"):
        convert_torch.convert_checkpoint(ckpt.tar, str(out), "resnet18", num_classes=10)
    assert out.read_bytes() == before
    convert_torch.convert_checkpoint(ckpt.tar, str(out), "resnet18", num_classes=10, overwrite=True)
    assert "wrote" in capsys.readouterr().out and os.listdir(out.parent) == [out.name]


def test_num_classes_defaults_to_the_checkpoint_classifier(checkpoints):
    model = convert_torch.convert(checkpoints("resnet18").net.state_dict(), "resnet18")
    assert model.output_shape == (None, 10) and model.name == "resnet18"


def test_wrong_arch_or_num_classes_names_the_tensor(checkpoints):
    state_dict = checkpoints("resnet18").net.state_dict()
    for bad in (0, -3):
        with pytest.raises(UserError, match=rf"--num_classes={bad} must be a positive class count"):
            convert_torch.convert(state_dict, "resnet18", bad)
    wrong_classes = r"tensor fc\.weight has shape \(10, 512\).*--num_classes=1000 needs \(1000, 512\)"
    with pytest.raises(UserError, match=wrong_classes):
        convert_torch.convert(state_dict, "resnet18", 1000)
    with pytest.raises(UserError, match=r"tensor layer1\.0\.conv1\.weight has shape \(64, 64, 3, 3\).*--arch=resnet50"):
        convert_torch.convert(state_dict, "resnet50", 10)
    with pytest.raises(UserError, match=r"lacks .* tensors that --arch=resnet34 needs \(first: layer1\.2\.conv1"):
        convert_torch.convert(state_dict, "resnet34", 10)
    with pytest.raises(UserError, match="--arch=resnet19 is not supported. Allowed: resnet18, resnet34, resnet50"):
        convert_torch.convert(state_dict, "resnet19", 10)


def test_unknown_and_missing_tensors_are_refused(checkpoints):
    state_dict = dict(checkpoints("resnet18").net.state_dict())
    extra = dict(state_dict, **{"aux.linear.weight": torch.zeros(3, 3)})
    with pytest.raises(UserError, match=r"has 1 tensors that --arch=resnet18 does not use \(first: aux\.linear\.weight"):
        convert_torch.convert(extra, "resnet18", 10)
    del state_dict["layer3.1.bn2.running_var"]
    with pytest.raises(UserError, match=r"lacks 1 tensors .*first: layer3\.1\.bn2\.running_var"):
        convert_torch.convert(state_dict, "resnet18", 10)


def test_file_errors(checkpoints, tmp_path, monkeypatch):
    ckpt = checkpoints("resnet18")
    with pytest.raises(UserError, match=r"checkpoint '.*nowhere\.pth' does not exist"):
        convert_torch.load_state_dict(str(tmp_path / "nowhere.pth"))
    with pytest.raises(UserError, match=r"must end in \.keras"):
        convert_torch.convert_checkpoint(ckpt.pth, str(tmp_path / "out.h5"), "resnet18")
    not_torch = tmp_path / "notes.pth"
    not_torch.write_text("hello")
    with pytest.raises(UserError, match="could not read checkpoint .*notes\\.pth.* with torch.load"):
        convert_torch.load_state_dict(str(not_torch))
    # Bytes that are no pickle at all are "not a checkpoint", never a hint to --allow_pickle.
    json_file = tmp_path / "config.pth"
    json_file.write_text('{"a": 1}')
    with pytest.raises(UserError, match=r"not a PyTorch checkpoint: Unsupported operand 123\)") as raised:
        convert_torch.load_state_dict(str(json_file))
    assert "--allow_pickle" not in str(raised.value)
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(UserError, match=r"EOFError: the file is empty or truncated"):
        convert_torch.load_state_dict(str(empty))
    no_tensors = tmp_path / "no_tensors.pth"
    torch.save({"epoch": 3}, no_tensors)
    with pytest.raises(UserError, match=r"holds no state dict \(found \['epoch'\]\)"):
        convert_torch.load_state_dict(str(no_tensors))
    # A checkpoint with arbitrary Python objects loads only with --allow_pickle (torch.load weights_only).
    pickled = tmp_path / "with_args.pth.tar"
    torch.save({"state_dict": ckpt.net.state_dict(), "args": argparse.Namespace(lr=0.1)}, pickled)
    refused = r"holds Python objects besides tensors.*\(Unsupported global: GLOBAL argparse\.Namespace.*--allow_pickle"
    with pytest.raises(UserError, match=refused):
        convert_torch.load_state_dict(str(pickled))
    assert set(convert_torch.load_state_dict(str(pickled), allow_pickle=True)) == set(ckpt.net.state_dict())
    monkeypatch.setitem(sys.modules, "torch", None)  # as if torch were not installed
    with pytest.raises(UserError, match=r'needs torch, which is not installed.*pip install "\.\[torch\]"'):
        convert_torch.load_state_dict(ckpt.pth)


# torchvision's VGG-16 ("D"): conv widths, "M" a 2x2 max-pool.
VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class TorchVGG(nn.Module):
    """torchvision's VGG (make_layers + VGG) with optional narrower widths: `features.N`, `classifier.0/3/6`."""

    def __init__(self, config, batch_norm, num_classes, divisor=1, hidden=4096):
        super().__init__()
        layers, cin = [], 3
        for entry in config:
            if entry == "M":
                layers.append(nn.MaxPool2d(2, 2))
                continue
            layers.append(nn.Conv2d(cin, entry // divisor, 3, padding=1))
            layers += [nn.BatchNorm2d(entry // divisor), nn.ReLU()] if batch_norm else [nn.ReLU()]
            cin = entry // divisor
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(cin * 49, hidden), nn.ReLU(), nn.Dropout(),
            nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def random_torch_vgg(batch_norm, num_classes, seed, divisor=1, hidden=4096):
    """A torch VGG-16 in eval mode whose random weights give logits of +-10 or so, as a trained one's.

    Variance-preserving weights (torchvision's N(0, 0.01) Linear initialisation would shrink the
    logits to ~0.01, where any port looks right), random biases, and for BatchNorm, statistics
    near the data's with random scales and shifts.
    """
    torch.manual_seed(seed)
    net = TorchVGG(VGG16, batch_norm, num_classes, divisor, hidden)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.normal_(0.0, (2.0 / fan_in) ** 0.5)
                m.bias.normal_(0.0, 0.1)
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.2)
                m.momentum = None
        if batch_norm:
            net.train()
            net(torch.randn(4, 3, 64, 64))
            for m in net.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.add_(torch.randn_like(m.running_mean) * 0.2 * m.running_var.sqrt())
                    m.running_var.mul_(torch.empty_like(m.running_var).uniform_(0.5, 2.0))
        net.classifier[6].weight.mul_(0.5)
    return net.eval()


def _assert_logits_match(logits, expected, label):
    diff = np.abs(logits - expected).max()
    print(f"{label}: max |keras - torch| = {diff:.2e} (largest |logit| {np.abs(expected).max():.2f})")
    assert diff < 1e-4
    # The logits must vary across images and classes for the comparison to mean anything.
    assert expected.std() > 0.1 and np.abs(expected[0] - expected[1]).max() > 0.1


def test_torchvision_vgg16_converts_exactly_at_74_px():
    """The real VGG-16 layout and sizes (138M weights; fc1 reads a 7x7x512 map), at the paper's 74 px."""
    net = random_torch_vgg(False, 1000, seed=4)
    x = images((2, 74, 74, 3), seed=4)  # VGG's map is 2x2 there: the adaptive pooling spreads it to 7x7
    expected = torch_logits(net, x)
    model = convert_torch.convert(net.state_dict(), "vgg16")
    assert model.output_shape == (None, 1000) and model.input_shape == (None, None, None, 3)
    assert model.count_params() == 138_357_544  # torchvision's vgg16, as torch counts it
    _assert_logits_match(model(x).numpy(), expected, "vgg16 at 74 px")


@pytest.fixture(scope="module")
def narrow_vgg16_bn(tmp_path_factory):
    """VGG-16-BN in torchvision's layout at 1/8 of its widths (hidden 64), saved as a `.pth`: fast to convert."""
    net = random_torch_vgg(True, 10, seed=5, divisor=8, hidden=64)
    path = tmp_path_factory.mktemp("vgg16_bn") / "vgg16_bn.pth"
    torch.save(net.state_dict(), path)
    return argparse.Namespace(net=net, pth=str(path))


@pytest.mark.parametrize("size", [74, 224, 50])
def test_vgg16_bn_layout_converts_at_any_size(narrow_vgg16_bn, size):
    x = images((2, size, size, 3), seed=size)
    model = convert_torch.convert(convert_torch.load_state_dict(narrow_vgg16_bn.pth), "vgg16_bn")
    _assert_logits_match(model(x).numpy(), torch_logits(narrow_vgg16_bn.net, x), f"narrow vgg16_bn at {size} px")


def test_cli_writes_a_vgg_source_at_the_scaled_size(narrow_vgg16_bn, tmp_path, capsys):
    out = tmp_path / "vgg16_bn_imagenet.keras"
    convert_torch.convert_checkpoint(narrow_vgg16_bn.pth, str(out), "vgg16_bn")
    assert f"wrote {out}: vgg16_bn, 10 classes" in capsys.readouterr().out
    source = sources.build_source(str(out), (32, 32))  # the reference's CIFAR x7/3: 74 px
    assert source.image_size == (74, 74) and source.num_classes == 10
    x = images((2, 32, 32, 3), seed=6)
    resized = keras.ops.convert_to_numpy(keras.ops.image.resize(x, (74, 74), interpolation="bilinear"))
    np.testing.assert_allclose(source(x).numpy(), torch_logits(narrow_vgg16_bn.net, resized), atol=1e-4, rtol=0)


def test_wrong_vgg_variant_names_the_tensor(narrow_vgg16_bn):
    state_dict = narrow_vgg16_bn.net.state_dict()
    # vgg16_bn's features.1 is a BatchNorm, vgg16's a ReLU; vgg16's features.2 is a conv, vgg16_bn's a ReLU.
    with pytest.raises(UserError, match=r"lacks .* tensors that --arch=vgg16 needs \(first: features\.2\.weight.*VGG"):
        convert_torch.convert(state_dict, "vgg16")
    with pytest.raises(UserError, match=r"tensor classifier\.6\.weight has shape \(10, 64\).*needs \(1000, 64\)"):
        convert_torch.convert(state_dict, "vgg16_bn", 1000)
    with pytest.raises(UserError, match=r"lacks .* tensors that --arch=vgg19_bn needs"):
        convert_torch.convert(state_dict, "vgg19_bn")


@pytest.mark.slow
def test_command_line_converts_and_reports_bad_input_in_one_line(checkpoints, checkpoints_3d, tmp_path):
    ckpt = checkpoints("resnet18")
    out, unused = tmp_path / "resnet18_places365.keras", str(tmp_path / "x.keras")
    command = [sys.executable, "-m", "sskt_tf.convert_torch"]
    cases = {
        # Values after a space, as argparse took them, and the flags before the two arguments.
        "converts": [*command, "--arch", "resnet18", "--num_classes", "10", ckpt.tar, str(out)],
        "no --arch": [*command, ckpt.pth, unused],
        "unknown --arch": [*command, "--arch", "resnet7", ckpt.pth, unused],
        "no output": [*command, "--arch=resnet18", ckpt.pth],
        "3D depth": [*command, "--arch=resnet34_3d", checkpoints_3d("resnet18_3d-A").path, unused],
    }
    results = dict(zip(cases, run_commands(list(cases.values()))))
    rc, stdout, stderr = results["converts"]
    assert rc == 0 and stdout.startswith(f"wrote {out}: resnet18, 10 classes") and stderr == [], (rc, stderr[-20:])
    reloaded = keras.saving.load_model(str(out), compile=False)
    np.testing.assert_allclose(reloaded(ckpt.x).numpy(), ckpt.logits, atol=1e-4, rtol=0)
    expected = {
        "no --arch": ["error: --arch is required and was not given", "the checkpoint's architecture", "pass --arch=<value>"],
        "unknown --arch": ["error: flag --arch=resnet7: value should be one of <resnet18|resnet34|"],
        "no output": ["error: the following arguments are required: output; see python -m sskt_tf.convert_torch --help."],
        "3D depth": ["records arch 'resnet-18' (its 'arch' entry), but --arch=resnet34_3d is a ResNet-34; pass --arch=resnet18_3d."],
    }
    for name, needles in expected.items():
        assert_one_error_line(results[name], *needles)
        assert results[name][1] == "", name
    assert not os.path.exists(unused)


def test_an_output_path_that_cannot_be_a_file_is_refused_before_the_checkpoint_is_read(tmp_path):
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "dir.keras").mkdir()
    missing = str(tmp_path / "missing.pth")  # Never read: the output is checked first.
    with pytest.raises(UserError, match=f"^{tmp_path / 'dir.keras'} is a directory, not a file"):
        convert_torch.convert_checkpoint(missing, str(tmp_path / "dir.keras"), "resnet18")
    with pytest.raises(UserError, match=f"cannot write the output .keras file there, {tmp_path / 'a_file'} is a file"):
        convert_torch.convert_checkpoint(missing, str(tmp_path / "a_file" / "x.keras"), "resnet18")
    assert (tmp_path / "a_file").read_text() == "x"


# --- Hara et al.'s 3D ResNets (kenshohara/3D-ResNets-PyTorch, models/resnet.py) ----------------------
#
# Written here from the paper's description and that file's module names: Conv3d stem 7x7x7 stride
# (1, 2, 2), MaxPool3d(3, 2, 1), blocks of 3x3x3 convs (bottlenecks: 1x1x1, 3x3x3 with the stride,
# 1x1x1), layers 2-4 striding time as well as space; shortcut "A" = avg_pool3d(kernel 1, stride) with
# zero channels concatenated after, "B" = Conv3d 1x1x1 + BatchNorm3d as `downsample.0/1`. Clips are
# [N, 3, T, H, W] there, raw 0..255 values minus the ActivityNet mean.

ACTIVITYNET_MEAN = np.array([114.7748, 107.7354, 99.4750], np.float32)


class BasicBlock3D(nn.Module):
    expansion = 1

    def __init__(self, cin, width, stride, downsample):
        super().__init__()
        self.conv1 = nn.Conv3d(cin, width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm3d(width)
        self.conv2 = nn.Conv3d(width, width, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm3d(width)
        self.relu = nn.ReLU()
        self.downsample = downsample

    def forward(self, x):
        y = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(y + (x if self.downsample is None else self.downsample(x)))


class Bottleneck3D(nn.Module):
    expansion = 4

    def __init__(self, cin, width, stride, downsample):
        super().__init__()
        self.conv1 = nn.Conv3d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm3d(width)
        self.conv2 = nn.Conv3d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm3d(width)
        self.conv3 = nn.Conv3d(width, width * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm3d(width * 4)
        self.relu = nn.ReLU()
        self.downsample = downsample

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + (x if self.downsample is None else self.downsample(x)))


class ZeroPadDownsample(nn.Module):
    """Shortcut "A": a functools.partial of `downsample_basic_block` there (no parameters, no state dict entry)."""

    def __init__(self, channels, stride):
        super().__init__()
        self.channels, self.stride = channels, stride

    def forward(self, x):
        x = nn.functional.avg_pool3d(x, kernel_size=1, stride=self.stride)
        return torch.cat([x, x.new_zeros(x.shape[0], self.channels - x.shape[1], *x.shape[2:])], dim=1)


class TorchResNet3D(nn.Module):
    def __init__(self, block, layers, shortcut, num_classes):
        super().__init__()
        self.conv1 = nn.Conv3d(3, 64, 7, (1, 2, 2), 3, bias=False)
        self.bn1 = nn.BatchNorm3d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool3d(3, 2, 1)
        cin = 64
        for i, (width, n) in enumerate(zip((64, 128, 256, 512), layers), start=1):
            blocks = []
            for b in range(n):
                stride = 2 if (i > 1 and b == 0) else 1
                downsample, cout = None, width * block.expansion
                if stride != 1 or cin != cout:
                    if shortcut == "A":
                        downsample = ZeroPadDownsample(cout, stride)
                    else:
                        downsample = nn.Sequential(nn.Conv3d(cin, cout, 1, stride, bias=False), nn.BatchNorm3d(cout))
                blocks.append(block(cin, width, stride, downsample))
                cin = cout
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        # Their AvgPool3d over the whole last map of a 16-frame 112-px clip: the mean over it.
        return self.fc(x.mean(dim=(2, 3, 4)))


ARCHS_3D = {
    10: (BasicBlock3D, (1, 1, 1, 1)),
    18: (BasicBlock3D, (2, 2, 2, 2)),
    34: (BasicBlock3D, (3, 4, 6, 3)),
    50: (Bottleneck3D, (3, 4, 6, 3)),
}


def torch_count(depth, shortcut, num_classes=400):
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        net = TorchResNet3D(*ARCHS_3D[depth], shortcut, num_classes)
    return sum(p.numel() for p in net.parameters())


def trainable_count(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def random_torch_resnet3d(depth, shortcut, num_classes, seed):
    """A torch 3D ResNet in eval mode with random weights and logits of +-10 or so (see `random_torch_resnet`)."""
    torch.manual_seed(seed)
    net = TorchResNet3D(*ARCHS_3D[depth], shortcut, num_classes)
    last_bn = "bn3" if ARCHS_3D[depth][0] is Bottleneck3D else "bn2"
    with torch.no_grad():
        for name, m in net.named_modules():
            if isinstance(m, nn.BatchNorm3d):
                m.weight.uniform_(*((0.1, 0.5) if name.endswith(last_bn) else (0.5, 1.5)))
                m.bias.normal_(0.0, 0.2)
                m.momentum = None
        net.train()
        net(torch.from_numpy(video_clips((2, 6, 48, 48, 3), seed + 100) - ACTIVITYNET_MEAN).permute(0, 4, 1, 2, 3))
        for m in net.modules():
            if isinstance(m, nn.BatchNorm3d):
                m.running_mean.add_(torch.randn_like(m.running_mean) * 0.2 * m.running_var.sqrt())
                m.running_var.mul_(torch.empty_like(m.running_var).uniform_(0.5, 2.0))
        net.fc.weight.mul_(5.0)
        net.fc.bias.normal_(0.0, 0.5)
    return net.eval()


def video_clips(shape, seed=0):
    return np.random.RandomState(seed).uniform(0, 255, shape).astype(np.float32)


def torch_clip_logits(net, clips):
    """3D-ResNets-PyTorch's preprocessing: raw values minus the ActivityNet mean; [N, T, H, W, 3] -> [N, 3, T, H, W]."""
    with torch.no_grad():
        return net(torch.from_numpy((clips - ACTIVITYNET_MEAN).transpose(0, 4, 1, 2, 3).copy())).numpy()


# key -> (depth, shortcut, classes, seed, saved as a checkpoint file). Clips of 6 frames at 48 px: even
# sizes (where Keras' "same" padding would differ from torch's) and an odd time length after the max-pool.
SETTINGS_3D = {
    "resnet18_3d-A": (18, "A", 400, 0, True),  # Hara et al.'s Kinetics ResNet-18 layout
    "resnet10_3d-B": (10, "B", 5, 1, True),  # the projections of B in basic blocks
    "resnet50_3d-B": (50, "B", 400, 2, False),  # their Kinetics ResNet-50 layout (190 MB: not written)
}


@pytest.fixture(scope="module")
def checkpoints_3d(tmp_path_factory):
    """key of SETTINGS_3D -> a random torch 3D ResNet, saved as 3D-ResNets-PyTorch saves its checkpoints."""
    made = {}

    def get(key):
        if key not in made:
            depth, shortcut, num_classes, seed, saved = SETTINGS_3D[key]
            net = random_torch_resnet3d(depth, shortcut, num_classes, seed)
            # Their train.py: {'epoch', 'arch': 'resnet-18', 'state_dict' (DataParallel's "module."), 'optimizer'}.
            optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, dampening=0.9, weight_decay=1e-3)
            checkpoint = {
                "epoch": 200,
                "arch": f"resnet-{depth}",
                "state_dict": {f"module.{k}": v for k, v in net.state_dict().items()},
                "optimizer": optimizer.state_dict(),
            }
            path = None
            if saved:
                path = str(tmp_path_factory.mktemp(key) / f"resnet-{depth}-kinetics.pth")
                # The released Kinetics files predate torch 1.6's zip format.
                torch.save(checkpoint, path, _use_new_zipfile_serialization=False)
            x = video_clips((2, 6, 48, 48, 3), seed)
            made[key] = argparse.Namespace(
                arch=f"resnet{depth}_3d", depth=depth, shortcut=shortcut, num_classes=num_classes, net=net,
                checkpoint=checkpoint, path=path, x=x, logits=torch_clip_logits(net, x),
            )
        return made[key]

    return get


@pytest.mark.parametrize("key", sorted(SETTINGS_3D))
def test_hara_3d_checkpoints_convert_to_torchs_logits(checkpoints_3d, key):
    ckpt = checkpoints_3d(key)
    if ckpt.path:
        state_dict, recorded_arch = convert_torch.load_checkpoint(ckpt.path)
        assert recorded_arch == f"resnet-{ckpt.depth}"
    else:
        state_dict = ckpt.checkpoint["state_dict"]
    assert convert_torch.detect_shortcut(state_dict) == ckpt.shortcut
    model = convert_torch.convert(state_dict, ckpt.arch)
    assert model.input_shape == (None, None, None, None, 3) and model.output_shape == (None, ckpt.num_classes)
    _assert_logits_match(model(ckpt.x).numpy(), ckpt.logits, f"{key} on 6x48x48 clips")
    # The same parameters as the independent torch network (counted on torch's side without weights).
    assert trainable_count(model) == torch_count(ckpt.depth, ckpt.shortcut, ckpt.num_classes)


@pytest.mark.parametrize("depth, shortcut", [(18, "B"), (34, "A"), (34, "B"), (50, "A")])
def test_3d_resnet_parameter_counts_equal_torchs(depth, shortcut):
    from sskt_tf.models import resnet3d_classifier

    count = trainable_count(resnet3d_classifier(depth, 400, shortcut))
    assert count == torch_count(depth, shortcut)
    # 18 A, 10 B and 50 B are compared above, on converted networks.


def test_3d_resnet_parameter_counts_in_millions():
    # As quoted for Hara et al.'s Kinetics models: ResNet-18 (A) 33.2M, ResNet-34 (A) 63.5M with their
    # 400-way classifier; ResNet-50 (B) 46.2M without it (47.0M with).
    assert round(torch_count(18, "A") / 1e6, 1) == 33.2 and torch_count(18, "A") == 33_235_280
    assert round(torch_count(34, "A") / 1e6, 1) == 63.5 and torch_count(34, "A") == 63_544_912
    assert round((torch_count(50, "B") - (2048 * 400 + 400)) / 1e6, 1) == 46.2 and torch_count(50, "B") == 47_018_576


def test_cli_writes_a_3d_classifier_whose_layers_a_video_target_shares(checkpoints_3d, tmp_path, capsys):
    from sskt_tf.models import get_backbone

    ckpt = checkpoints_3d("resnet10_3d-B")
    out = tmp_path / "resnet10_3d_kinetics.keras"
    convert_torch.convert_checkpoint(ckpt.path, str(out), "resnet10_3d")
    printed = capsys.readouterr().out
    count = torch_count(10, "B", 5)
    assert printed.startswith(f"wrote {out}: resnet10_3d (shortcut B), 5 classes, {count:,} parameters"), printed
    assert f"--model=resnet10_3d --resnet_shortcut=B --init_checkpoint={out}" in printed
    reloaded = keras.saving.load_model(str(out), compile=False)
    assert reloaded.name == "resnet10_3d_kinetics"
    np.testing.assert_allclose(reloaded(ckpt.x).numpy(), ckpt.logits, atol=1e-4, rtol=0)
    # Every weighted layer of the video target has its namesake, of the same shapes, in the converted model.
    backbone = get_backbone("resnet10_3d", (None, None, None, 3), shortcut="B")
    weighted = {l.name: [tuple(w.shape) for w in l.weights] for l in backbone.layers if l.weights}
    # Stem conv and BN, 4 blocks x (2 convs, 2 BNs), 3 projections x (conv, BN).
    assert len(weighted) == 2 + 4 * 4 + 3 * 2 and all(
        [tuple(w.shape) for w in reloaded.get_layer(name).weights] == shapes for name, shapes in weighted.items()
    )


def test_bad_3d_checkpoints_are_refused_in_one_line(checkpoints_3d, checkpoints, tmp_path):
    ckpt = checkpoints_3d("resnet18_3d-A")
    state_dict = ckpt.checkpoint["state_dict"]

    def refused(match, *args, **kwargs):
        with pytest.raises(UserError, match=match) as raised:
            convert_torch.convert(*args, **kwargs)
        assert "\n" not in str(raised.value)

    missing = {k: v for k, v in state_dict.items() if k != "module.layer3.1.bn2.running_var"}
    refused(r"lacks 1 tensors .*first: layer3\.1\.bn2\.running_var\)\. Is it a 3D ResNet of that depth in "
            "3D-ResNets-PyTorch's layout", missing, "resnet18_3d")
    refused(r"has 40 tensors that --arch=resnet10_3d does not use \(first: layer1\.1\.bn1\.bias", state_dict,
            "resnet10_3d")
    # Image and video ResNets mistaken for one another: said so, with the arch to pass.
    refused(r"conv1\.weight has shape \(64, 3, 7, 7, 7\), a 3D \(video\) convolution, but --arch=resnet18 is a 2D "
            r"ResNet; pass --arch=resnet18_3d\.$", state_dict, "resnet18")
    refused(r"conv1\.weight has shape \(64, 3, 7, 7\), a 2D \(image\) convolution, but --arch=resnet18_3d is a 3D "
            r"ResNet; pass --arch=resnet18\.$", checkpoints("resnet18").net.state_dict(), "resnet18_3d")
    # Shortcut B read as A where its first projection is missing: the other projections are left over.
    b = dict(checkpoints_3d("resnet10_3d-B").checkpoint["state_dict"])
    del b["module.layer2.0.downsample.0.weight"]
    refused(r"has 14 tensors that --arch=resnet10_3d does not use \(first: layer2\.0\.downsample\.1\.bias", b,
            "resnet10_3d")
    # The depth the checkpoint records (3D-ResNets-PyTorch asserts it too), before any tensor is read.
    out = str(tmp_path / "x.keras")
    with pytest.raises(UserError, match=r"records arch 'resnet-18' \(its 'arch' entry\), but --arch=resnet34_3d is a "
                       r"ResNet-34; pass --arch=resnet18_3d\.$"):
        convert_torch.convert_checkpoint(ckpt.path, out, "resnet34_3d")
    assert not os.path.exists(out)
    convert_torch.check_recorded_arch("resnet-18", "resnet18")  # the entry does not say 2D or 3D
    convert_torch.check_recorded_arch("resnext-101", "resnet101_3d")  # other forms are not compared
    with pytest.raises(UserError, match=r"records arch 'resnet-200'.*--arch=resnet50 is a ResNet-50; that depth is not"):
        convert_torch.check_recorded_arch("resnet-200", "resnet50")
