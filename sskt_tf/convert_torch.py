"""Ports a torchvision-layout ResNet or VGG checkpoint (PyTorch) into a Keras `.keras` source.

    python -m sskt_tf.convert_torch --arch resnet50 --num_classes 365 \\
        resnet50_places365.pth.tar resnet50_places365.keras
    python -m sskt_tf.convert_torch --arch vgg16 vgg16-397923af.pth vgg16_imagenet.keras

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
"""

import os
import pickle

import numpy as np
from absl import flags

from sskt_tf.cli import flag_definitions, run_cli
from sskt_tf.errors import UserError, one_line, writable_file

# --arch -> (family, depth, batch norm), as torchvision's constructors of the same names.
ARCHS = {f"resnet{depth}": ("resnet", depth, True) for depth in (18, 34, 50, 101, 152)}
ARCHS.update({f"vgg{depth}": ("vgg", depth, False) for depth in (11, 13, 16, 19)})
ARCHS.update({f"vgg{depth}_bn": ("vgg", depth, True) for depth in (11, 13, 16, 19)})
# The state-dict key of each family's last Linear layer: its rows are the classes.
_CLASSIFIER = {"resnet": "fc.weight", "vgg": "classifier.6.weight"}
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
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, dict) or not any(hasattr(v, "shape") for v in checkpoint.values()):
        keys = list(checkpoint)[:5] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise UserError(
            f"checkpoint {path!r} holds no state dict (found {keys}); expected a dict of tensors, "
            "or a dict with one under 'state_dict'."
        )
    return {k: _to_numpy(v) for k, v in checkpoint.items() if hasattr(v, "shape")}


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
    family = ARCHS[arch][0]
    kind = "ResNet of that depth" if family == "resnet" else "VGG of that depth (BatchNorm: the _bn archs)"
    return UserError(
        f"{origin} lacks {len(keys)} tensors that --arch={arch} needs (first: {', '.join(keys[:4])}). "
        f"Is it a torchvision-layout {kind}? Check --arch."
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
            `classifier.6.bias`, ...); `module.` prefixes are removed.
        arch: "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", or "vgg11",
            "vgg13", "vgg16", "vgg19" with or without "_bn".
        num_classes: classifier width; default the first dimension of `fc.weight`
            (`classifier.6.weight` for VGG).
        name: Keras model name; default `arch`.
        origin: how error messages name the state dict (e.g. the checkpoint's path).

    Returns:
        A functional `keras.Model` from raw [0, 255] RGB images [N, H, W, 3] (any H, W; VGG
        at least 32 px) to logits.

    Example:
    >>> state_dict = torchvision.models.vgg16(weights="IMAGENET1K_V1").state_dict()
    >>> model = convert(state_dict, "vgg16")
    >>> model.save("vgg16_imagenet.keras")
    """
    from sskt_tf.models.resnet import resnet_classifier

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
    if family == "vgg":
        model, flattened = _vgg(weights, arch, num_classes, name or arch, origin)
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
        checkpoint: a PyTorch `.pth` (state dict) or `.pth.tar` (a dict with `state_dict`).
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
    state_dict = load_state_dict(checkpoint, allow_pickle=allow_pickle)
    stem = os.path.splitext(os.path.basename(output))[0]
    name = "".join(c if c.isalnum() else "_" for c in stem) or arch
    model = convert(state_dict, arch, num_classes, name=name, origin=f"checkpoint {checkpoint!r}")
    # Through a temporary file: an interrupted save never leaves half a model where a source was.
    tmp = f"{output}.tmp.keras"
    model.save(tmp)
    os.replace(tmp, output)
    parameters = sum(int(np.prod(w.shape)) for w in model.trainable_weights)  # as torch counts them
    print(
        f"wrote {output}: {arch}, {model.output_shape[-1]} classes, {parameters:,} parameters "
        f"from {len(state_dict)} tensors of {checkpoint}; use it as --sources={output}"
    )
    return model


@flag_definitions
def define_flags(flag_values):
    """Defines the flags of `python -m sskt_tf.convert_torch` on `flag_values` (see `sskt_tf.cli`)."""
    fv = {"flag_values": flag_values}
    flags.DEFINE_enum("arch", None, list(ARCHS), "the checkpoint's architecture", required=True, **fv)
    flags.DEFINE_integer(
        "num_classes",
        None,
        "classifier width (1000 ImageNet, 365 Places365); default: from fc.weight (VGG: classifier.6.weight)",
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
