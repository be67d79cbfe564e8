"""Tests of the PyTorch -> Keras ResNet and VGG converter: logits parity with torch, checkpoint formats, errors.

The torch ResNets and VGGs are written here (torchvision's layout and module names, v1.5
bottlenecks, VGG's adaptive 7x7 pooling) so that the tests need torch but not torchvision.
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
def test_command_line_converts_and_reports_bad_input_in_one_line(checkpoints, tmp_path):
    ckpt = checkpoints("resnet18")
    out, unused = tmp_path / "resnet18_places365.keras", str(tmp_path / "x.keras")
    command = [sys.executable, "-m", "sskt_tf.convert_torch"]
    cases = {
        # Values after a space, as argparse took them, and the flags before the two arguments.
        "converts": [*command, "--arch", "resnet18", "--num_classes", "10", ckpt.tar, str(out)],
        "no --arch": [*command, ckpt.pth, unused],
        "unknown --arch": [*command, "--arch", "resnet7", ckpt.pth, unused],
        "no output": [*command, "--arch=resnet18", ckpt.pth],
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
