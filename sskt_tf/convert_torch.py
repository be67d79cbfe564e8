"""Ports a PyTorch ResNet or VGG checkpoint into a Keras `.keras` model: image sources, video targets.

    python -m sskt_tf.convert_torch --arch resnet50 --num_classes 365 \\
        resnet50_places365.pth.tar resnet50_places365.keras
    python -m sskt_tf.convert_torch --arch vgg16 vgg16-397923af.pth vgg16_imagenet.keras
    python -m sskt_tf.convert_torch --arch resnet18_3d resnet-18-kinetics.pth resnet18_3d_kinetics.keras

The two arguments after the flags: the checkpoint, a PyTorch `.pth` (state dict) or `.pth.tar`
(a dict with `state_dict`), and the `.keras` file to write (replaced only with `--overwrite`).
`sskt-convert-torch` is the same command.

The paper's sources are torchvision's ImageNet ResNet-50 (v1.5) and VGG-16 and the CSAIL
Places365 ResNet-50, all PyTorch checkpoints; Keras Applications' ResNet50 and VGG16 carry other
weights (v1 ResNet, caffe preprocessing). The converted model takes raw [0, 255] RGB images of
any size (ImageNet mean/std inside, as torchvision's transforms; VGG pools adaptively to 7x7, as
torchvision's) and returns logits, so `--sources=/path/x.keras` uses it as is. Reads plain state
dicts (`.pth`), checkpoints that hold one under `state_dict` (`.pth.tar`), and `module.` prefixes
of DataParallel. Needs torch: `pip install ".[torch]"`.

The `resnet*_3d` archs read Hara et al.'s 3D ResNets (kenshohara/3D-ResNets-PyTorch,
models/resnet.py, which the SSKT authors' video code uses), e.g. their Kinetics-400 checkpoints
`resnet-18-kinetics.pth` (a dict with `state_dict` and `arch`, e.g. 'resnet-18', checked against
--arch). The shortcut is read from the checkpoint: a `layer2.0.downsample.0.weight` tensor means
"B" (1x1x1 projections: their ResNet-50 and deeper), none means "A" (zero-padded identity: their
ResNet-18/34). The converted model takes raw [0, 255] RGB clips `[N, T, H, W, 3]` of any size (the
ActivityNet mean subtracted inside, as their training did) and returns logits; it initialises a
video target (`--model=resnet18_3d` with the same `--resnet_shortcut`).
"""

import os
import pickle
import re

import numpy as np
from absl import flags

from sskt_tf.cli import flag_definitions, run_cli
from sskt_tf.errors import UserError, one_line, writable_file

# --arch -> (family, depth, batch norm), as torchvision's constructors of the same names.
ARCHS = {f"resnet{depth}": ("resnet", depth, True) for depth in (18, 34, 50, 101, 152)}
ARCHS.update({f"vgg{depth}": ("vgg", depth, False) for depth in (11, 13, 16, 19)})
ARCHS.update({f"vgg{depth}_bn": ("vgg", depth, True) for depth in (11, 13, 16, 19)})
# Hara et al.'s 3D ResNets, as 3D-ResNets-PyTorch's resnet10 ... resnet200.
ARCHS.update({f"resnet{depth}_3d": ("resnet3d", depth, True) for depth in (10, 18, 34, 50, 101, 152, 200)})
# The state-dict key of each family's last Linear layer: its rows are the classes.
_CLASSIFIER = {"resnet": "fc.weight", "vgg": "classifier.6.weight", "resnet3d": "fc.weight"}
# The tensor that only a 3D ResNet with shortcut "B" has (layer2's first block always changes the shape).
_SHORTCUT_B_KEY = "layer2.0.downsample.0.weight"
# BatchNorm's step counter: PyTorch bookkeeping, not a weight.
_IGNORED_SUFFIXES = (".num_batches_tracked",)


def _import_torch():
    try:
        import torch
    except ImportError:
        raise UserError(
            'reading PyTorch checkpoints needs torch, which is not installed. Install it with pip install ".[torch]" '
            "(or pip install torch; a CPU build is enough)."
        ) from None
    return torch


def _to_numpy(value):
    if hasattr(value, "detach"):  # a torch.Tensor; convert() itself does not need torch
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def load_state_dict(path, allow_pickle=False):
    """Reads the state dict of a PyTorch checkpoint file as `{name: numpy array}`.

    Args:
        path: a `.pth` state dict, or a checkpoint dict holding it under `state_dict` (`.pth.tar`).
        allow_pickle: unpickle arbitrary Python objects (`torch.load(weights_only=False)`);
            only for trusted files that hold more than tensors and plain containers.

    Returns:
        `{tensor name: numpy array}`, the names as stored (`module.` prefixes kept).

    Raises:
        UserError: a missing or unreadable file, one without tensors, or (without `allow_pickle`)
            one holding other Python objects.
    """
    return load_checkpoint(path, allow_pickle)[0]


def load_checkpoint(path, allow_pickle=False):
    """`load_state_dict`, and the architecture the checkpoint records, if any.

    Args:
        path, allow_pickle: as `load_state_dict`.

    Returns:
        `(state_dict, recorded_arch)`: the state dict as `load_state_dict` returns it, and the
        checkpoint dict's `arch` entry (str; e.g. 'resnet-18' in 3D-ResNets-PyTorch's files,
        'resnet50' in CSAIL Places365's), or None where there is none.

    Raises:
        UserError: as `load_state_dict`.
    """
    if not os.path.isfile(path):
        raise UserError(f"checkpoint {path!r} does not exist; pass the path of a downloaded .pth or .pth.tar file.")
    torch = _import_torch()

    def load(**extra):
        return torch.load(path, map_location="cpu", weights_only=not allow_pickle, **extra)

    try:
        try:
            checkpoint = load()
        except UnicodeDecodeError:
            # Checkpoints pickled by Python 2 (older Places365 releases) need latin1 strings.
            checkpoint = load(encoding="latin1")
    except pickle.UnpicklingError as e:
        # torch's message is a paragraph; what follows "WeightsUnpickler error:" names the refused part.
        after = str(e).partition("WeightsUnpickler error:")[2]
        reason = next((l.strip() for l in after.splitlines() if l.strip()), "").split(". ")[0][:160]
        if not reason or reason.startswith("Unsupported operand"):
            # Not pickle opcodes at all: another format, a truncated download, or not a checkpoint.
            raise UserError(
                f"could not read checkpoint {path!r} with torch.load (not a PyTorch checkpoint: "
                f"{reason or one_line(e)[:160]}). It must be a PyTorch .pth/.pth.tar file; a truncated download "
                "reads the same, so download it again."
            ) from None
        raise UserError(
            f"checkpoint {path!r} holds Python objects besides tensors, which are not loaded by default "
            f"({reason}). If you trust the file, pass --allow_pickle."
        ) from None
    except Exception as e:
        reason = (str(e).splitlines() or [""])[0][:160] or "the file is empty or truncated"
        raise UserError(
            f"could not read checkpoint {path!r} with torch.load ({type(e).__name__}: {reason}). "
            "It must be a PyTorch .pth/.pth.tar file."
        ) from None
    if hasattr(checkpoint, "state_dict") and callable(checkpoint.state_dict):  # a whole nn.Module
        checkpoint = checkpoint.state_dict()
    recorded_arch = None
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
        if isinstance(checkpoint.get("arch"), str):
            recorded_arch = checkpoint["arch"]
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, dict) or not any(hasattr(v, "shape") for v in checkpoint.values()):
        keys = list(checkpoint)[:5] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise UserError(
            f"checkpoint {path!r} holds no state dict (found {keys}); expected a dict of tensors, "
            "or a dict with one under 'state_dict'."
        )
    return {k: _to_numpy(v) for k, v in checkpoint.items() if hasattr(v, "shape")}, recorded_arch


def _chw_to_hwc_rows(weight, height, width, channels):
    """A torch Linear weight (out, C*H*W) that follows a flatten of (C, H, W) -> a Keras kernel for (H, W, C)."""
    out = weight.shape[0]
    return weight.reshape(out, channels, height, width).transpose(2, 3, 1, 0).reshape(height * width * channels, out)


def _expected_tensors(layer, flattened=None):
    """(torch key, torch shape, torch -> Keras array map) for each weight of `layer`, in Keras' order.

    `flattened`: (H, W, C) of the feature map a Dense layer reads through a Flatten; PyTorch
    flattens it channels first, Keras channels last, so the kernel's rows are reordered.
    """
    import keras

    module = layer.name.replace("_", ".")  # torchvision module path: layer1_0_conv1 -> layer1.0.conv1
    if isinstance(layer, keras.layers.Conv3D):
        kt, kh, kw, cin, cout = layer.kernel.shape
        # PyTorch Conv3d (out, in, kt, kh, kw) -> Keras (kt, kh, kw, in, out); Hara's ResNets have no bias.
        return [(f"{module}.weight", (cout, cin, kt, kh, kw), lambda w: w.transpose(2, 3, 4, 1, 0))]
    if isinstance(layer, keras.layers.Conv2D):
        kh, kw, cin, cout = layer.kernel.shape
        # PyTorch (out, in, kh, kw) -> Keras (kh, kw, in, out). ResNets' convs have no bias, VGGs' do.
        kernel = (f"{module}.weight", (cout, cin, kh, kw), lambda w: w.transpose(2, 3, 1, 0))
        return [kernel, (f"{module}.bias", (cout,), lambda w: w)] if layer.use_bias else [kernel]
    if isinstance(layer, keras.layers.BatchNormalization):
        names = ("weight", "bias", "running_mean", "running_var")  # Keras: gamma, beta, moving mean/var
        return [(f"{module}.{n}", tuple(v.shape), lambda w: w) for n, v in zip(names, layer.weights)]
    if isinstance(layer, keras.layers.Dense):
        cin, cout = layer.kernel.shape
        to_kernel = (lambda w: _chw_to_hwc_rows(w, *flattened)) if flattened else (lambda w: w.T)
        return [(f"{module}.weight", (cout, cin), to_kernel), (f"{module}.bias", (cout,), lambda w: w)]
    raise TypeError(f"no PyTorch counterpart known for layer {layer.name!r} ({type(layer).__name__})")


def _missing(origin, arch, keys):
    kind = {
        "resnet": "a torchvision-layout ResNet of that depth",
        "vgg": "a torchvision-layout VGG of that depth (BatchNorm: the _bn archs)",
        "resnet3d": "a 3D ResNet of that depth in 3D-ResNets-PyTorch's layout",
    }[ARCHS[arch][0]]
    return UserError(
        f"{origin} lacks {len(keys)} tensors that --arch={arch} needs (first: {', '.join(keys[:4])}). "
        f"Is it {kind}? Check --arch."
    )


def detect_shortcut(state_dict):
    """The shortcut of a 3D-ResNets-PyTorch state dict: "B" (1x1x1 projections) or "A" (zero-padded identity).

    Every 3D ResNet's layer2 begins with a block that halves the size and doubles the width, so
    shortcut "B" always gives it a `layer2.0.downsample.0.weight`, and "A" (no parameters) never.

    Args:
        state_dict: `{name: tensor or array}`; `module.` prefixes are ignored.

    Returns:
        "A" or "B".
    """
    return "B" if any(k.removeprefix("module.") == _SHORTCUT_B_KEY for k in state_dict) else "A"


def check_recorded_arch(recorded_arch, arch, origin="the checkpoint"):
    """Refuses an `--arch` whose depth differs from the one the checkpoint records in its `arch` entry.

    3D-ResNets-PyTorch records e.g. 'resnet-18' (and its own loader asserts the match), CSAIL
    Places365 e.g. 'resnet50'. Only ResNet depths are compared (the entry does not say 2D or 3D);
    entries of other forms, and None, pass.

    Raises:
        UserError: the depths differ; the message names the matching --arch.
    """
    family, depth = ARCHS[arch][:2] if arch in ARCHS else (None, None)
    match = re.fullmatch(r"resnet-?(\d+)", recorded_arch or "")
    if family not in ("resnet", "resnet3d") or not match or int(match.group(1)) == depth:
        return
    suggestion = f"resnet{match.group(1)}" + ("_3d" if family == "resnet3d" else "")
    fix = f"pass --arch={suggestion}" if suggestion in ARCHS else "that depth is not supported"
    raise UserError(
        f"{origin} records arch {recorded_arch!r} (its 'arch' entry), but --arch={arch} is a ResNet-{depth}; {fix}."
    )


def _vgg(weights, arch, num_classes, name, origin):
    """torchvision's VGG `arch` with the widths of the state dict's tensors, and the flattened map fc1 reads."""
    from sskt_tf.models.vgg import features_layout, vgg_classifier

    _, depth, batch_norm = ARCHS[arch]
    # The layout (where the convs, BatchNorms and pools sit) comes from --arch; the widths from the
    # checkpoint: torchvision's own (64 ... 512, 4096) for its files, and narrower VGGs of the same
    # layout convert too. A checkpoint of another depth or BatchNorm variant misses a conv here.
    keys = [f"features.{i}.weight" for i, kind, _ in features_layout(depth, batch_norm) if kind == "conv"]
    keys.append("classifier.0.weight")
    missing = [key for key in keys if key not in weights]
    if missing:
        raise _missing(origin, arch, missing)
    widths = [int(weights[key].shape[0]) for key in keys]
    model = vgg_classifier(
        depth, batch_norm, num_classes, widths=widths[:-1], hidden=widths[-1], random_init=False, name=name
    )
    return model, {"classifier_0": tuple(model.get_layer("flatten").input.shape[1:])}


def convert(state_dict, arch, num_classes=None, name=None, origin="the state dict"):
    """Builds the Keras ResNet or VGG `arch` and loads a torchvision-layout PyTorch state dict into it.

    Every tensor of the state dict must find its weight and every Keras weight must be set,
    otherwise a `UserError` names the offending tensor.

    Args:
        state_dict: `{name: tensor or array}` in torchvision's layout (ResNet: `conv1.weight`,
            `layer1.0.bn1.running_var`, `fc.bias`, ...; VGG: `features.0.weight`,
            `classifier.6.bias`, ...), or 3D-ResNets-PyTorch's for the `_3d` archs (the ResNet
            names, Conv3d weights); `module.` prefixes are removed.
        arch: "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", or "vgg11",
            "vgg13", "vgg16", "vgg19" with or without "_bn"; or a 3D ResNet, "resnet10_3d",
            "resnet18_3d", "resnet34_3d", "resnet50_3d", "resnet101_3d", "resnet152_3d",
            "resnet200_3d", whose shortcut comes from the state dict (`detect_shortcut`).
        num_classes: classifier width; default the first dimension of `fc.weight`
            (`classifier.6.weight` for VGG).
        name: Keras model name; default `arch`.
        origin: how error messages name the state dict (e.g. the checkpoint's path).

    Returns:
        A functional `keras.Model` from raw [0, 255] RGB images [N, H, W, 3] (any H, W; VGG
        at least 32 px) to logits; for the 3D ResNets `resnet3d_classifier`'s, from raw clips
        [N, T, H, W, 3].

    Raises:
        UserError: an unknown `arch`, a bad `num_classes`, or a state dict that does not fit
            `arch` (a missing, unused or misshapen tensor; 2D weights for a 3D arch or back).

    Example:
    >>> state_dict = torchvision.models.vgg16(weights="IMAGENET1K_V1").state_dict()
    >>> model = convert(state_dict, "vgg16")
    >>> model.save("vgg16_imagenet.keras")
    """
    from sskt_tf.models.resnet import resnet_classifier
    from sskt_tf.models.resnet3d import resnet3d_classifier

    if arch not in ARCHS:
        raise UserError(f"--arch={arch} is not supported. Allowed: {', '.join(ARCHS)}.")
    family, depth, _ = ARCHS[arch]
    weights = {k.removeprefix("module."): _to_numpy(v) for k, v in state_dict.items()}
    if num_classes is not None and num_classes < 1:
        raise UserError(f"--num_classes={num_classes} must be a positive class count (1000 ImageNet, 365 Places365).")
    if num_classes is None:
        classifier = _CLASSIFIER[family]
        if classifier not in weights:
            raise UserError(f"{origin} has no {classifier}, so the number of classes is unknown; pass --num_classes.")
        num_classes = int(weights[classifier].shape[0])
    stem, stem_ndim = weights.get("conv1.weight"), {"resnet": 4, "resnet3d": 5}.get(family)
    if stem_ndim and stem is not None and stem.ndim in (4, 5) and stem.ndim != stem_ndim:
        # An image ResNet for a video arch or back: say so, rather than that every tensor has the wrong shape.
        video = stem.ndim == 5
        suggestion = f"resnet{depth}_3d" if video else f"resnet{depth}"
        fix = f"pass --arch={suggestion}" if suggestion in ARCHS else "check --arch"
        raise UserError(
            f"{origin}: conv1.weight has shape {tuple(stem.shape)}, a {'3D (video)' if video else '2D (image)'} "
            f"convolution, but --arch={arch} is a {'2D' if video else '3D'} ResNet; {fix}."
        )
    if family == "vgg":
        model, flattened = _vgg(weights, arch, num_classes, name or arch, origin)
    elif family == "resnet3d":
        model, flattened = resnet3d_classifier(depth, num_classes, detect_shortcut(weights), name=name or arch), {}
    else:
        model, flattened = resnet_classifier(depth, num_classes, name=name or arch), {}

    used, missing, assigned = set(), [], 0
    for layer in model.layers:
        if not layer.weights:
            continue
        values = []
        for key, shape, to_keras in _expected_tensors(layer, flattened.get(layer.name)):
            if key not in weights:
                missing.append(key)
                continue
            if tuple(weights[key].shape) != tuple(shape):
                raise UserError(
                    f"{origin}: tensor {key} has shape {tuple(weights[key].shape)}, but --arch={arch} "
                    f"--num_classes={num_classes} needs {tuple(shape)}. Check --arch and --num_classes "
                    "against the checkpoint."
                )
            values.append(np.asarray(to_keras(weights[key]), dtype=np.float32))
            used.add(key)
        if len(values) == len(layer.weights):
            layer.set_weights(values)
            assigned += len(values)
    if missing:
        raise _missing(origin, arch, missing)
    unknown = sorted(k for k in weights if k not in used and not k.endswith(_IGNORED_SUFFIXES))
    if unknown:
        raise UserError(
            f"{origin} has {len(unknown)} tensors that --arch={arch} does not use (first: {', '.join(unknown[:4])}). "
            "A deeper network or a different layout? Check --arch."
        )
    # Every variable, moving statistics included, must have come from the checkpoint.
    if assigned != len(model.weights):
        raise AssertionError(f"set {assigned} of {len(model.weights)} Keras weights")
    return model


def convert_checkpoint(checkpoint, output, arch, *, num_classes=None, allow_pickle=False, overwrite=False):
    """What `python -m sskt_tf.convert_torch` does: reads `checkpoint`, converts it, writes `output`.

    The output is checked before the checkpoint is read, and saved through a temporary file, so an
    interrupted save never leaves half a model where a source was. Prints one line: what was written.

    Args:
        checkpoint: a PyTorch `.pth` (state dict) or `.pth.tar` (a dict with `state_dict`; an
            `arch` entry there must name the depth of `arch`, see `check_recorded_arch`).
        output: the `.keras` file to write; its file name (letters, digits, `_`) names the model.
        arch: the checkpoint's architecture, a key of `ARCHS` (see `convert`).
        num_classes: classifier width; None: from the checkpoint (see `convert`).
        allow_pickle: unpickle arbitrary Python objects in the checkpoint (trusted files only).
        overwrite: replace an existing `output`.

    Returns:
        The converted `keras.Model` (see `convert`).

    Raises:
        UserError: `output` does not end in `.keras`, exists without `overwrite` or cannot be
            written; or what `load_state_dict` and `convert` refuse.
    """
    if not output.endswith(".keras"):
        raise UserError(f"output {output!r} must end in .keras (Keras 3 model file); e.g. {arch}.keras.")
    if os.path.isfile(output) and not overwrite:
        raise UserError(f"output {output!r} exists; pass --overwrite to replace it, or another output path.")
    writable_file(output, None, what="output .keras file")  # Before the checkpoint is read.
    state_dict, recorded_arch = load_checkpoint(checkpoint, allow_pickle=allow_pickle)
    check_recorded_arch(recorded_arch, arch, origin=f"checkpoint {checkpoint!r}")
    stem = os.path.splitext(os.path.basename(output))[0]
    name = "".join(c if c.isalnum() else "_" for c in stem) or arch
    model = convert(state_dict, arch, num_classes, name=name, origin=f"checkpoint {checkpoint!r}")
    # Through a temporary file: an interrupted save never leaves half a model where a source was.
    tmp = f"{output}.tmp.keras"
    model.save(tmp)
    os.replace(tmp, output)
    parameters = sum(int(np.prod(w.shape)) for w in model.trainable_weights)  # as torch counts them
    if ARCHS[arch][0] == "resnet3d":
        shortcut = detect_shortcut(state_dict)
        what = f"{arch} (shortcut {shortcut})"
        use = (
            f"initialise a video target with it: --model={arch} --resnet_shortcut={shortcut} "
            f"--init_checkpoint={output}"
        )
    else:
        what, use = arch, f"use it as --sources={output}"
    print(
        f"wrote {output}: {what}, {model.output_shape[-1]} classes, {parameters:,} parameters "
        f"from {len(state_dict)} tensors of {checkpoint}; {use}"
    )
    return model


@flag_definitions
def define_flags(flag_values):
    """Defines the flags of `python -m sskt_tf.convert_torch` on `flag_values` (see `sskt_tf.cli`)."""
    fv = {"flag_values": flag_values}
    flags.DEFINE_enum(
        "arch",
        None,
        list(ARCHS),
        "the checkpoint's architecture: torchvision's resnet*/vgg* (images), or Hara et al.'s 3D ResNets "
        "resnet*_3d (video clips; 3D-ResNets-PyTorch, shortcut A or B read from the checkpoint)",
        required=True,
        **fv,
    )
    flags.DEFINE_integer(
        "num_classes",
        None,
        "classifier width (1000 ImageNet, 365 Places365, 400 Kinetics); default: from fc.weight "
        "(VGG: classifier.6.weight)",
        **fv,
    )
    flags.DEFINE_bool(
        "allow_pickle",
        False,
        "unpickle arbitrary Python objects in the checkpoint (torch.load weights_only=False); trusted files only",
        **fv,
    )
    flags.DEFINE_bool("overwrite", False, "replace an existing output file", **fv)


def main(argv):
    """The absl main of `python -m sskt_tf.convert_torch`: the checkpoint and the output follow the flags."""
    arguments = argv[1:]
    usage = "see python -m sskt_tf.convert_torch --help."
    if len(arguments) < 2:
        missing = ("checkpoint", "output")[len(arguments):]
        raise UserError(f"the following arguments are required: {', '.join(missing)}; {usage}")
    if len(arguments) > 2:
        raise UserError(f"unrecognized arguments: {' '.join(arguments[2:])}; {usage}")
    fl = flags.FLAGS
    convert_checkpoint(
        *arguments, fl.arch, num_classes=fl.num_classes, allow_pickle=fl.allow_pickle, overwrite=fl.overwrite
    )


def run():
    """The `python -m sskt_tf.convert_torch` (and `sskt-convert-torch`) command."""
    run_cli(main, define_flags)


if __name__ == "__main__":
    run()
