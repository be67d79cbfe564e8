"""Training-batch augmentation: the reference's pad-crop-flip, RandAugment, MixUp and CutMix.

`sskt_tf.config.AugmentationConfig` (the `--augment`, `--mixup`, ... flags) says what a
training batch goes through; `BatchAugmenter` applies it, in this order:

1. `standard`: per-image random crop of the zero-padded image and random horizontal
   flip, as the reference code's `RandomCrop(size, padding=4)` + `RandomHorizontalFlip()`.
2. `randaugment` (on top of 1): RandAugment with a fixed magnitude (Cubuk et al., 2020),
   by keras-cv.
3. `--mixup` / `--cutmix`: the batch is mixed with a permutation of itself and the labels
   become soft (one-hot rows mixed with the same weights).

All of it happens in the tf.data pipeline, before the batch reaches `train_step`, so the
frozen sources see exactly the (augmented, mixed) images the target sees.

Randomness: every operation draws from the batch's own seed `[seed, batch index]`, never
from a global or stateful generator that advances with the stream. Batch i is therefore
the same in every run with the same `seed`, and a resumed run that rebuilds the stream at
batch i (`Datasets.train_from`) continues it bit for bit. keras-cv's RandAugment keeps
its randomness in `tf.random.Generator`s; `KerasCVRandAugment` resets them from the
batch's seed before each batch (see there).
"""

from __future__ import annotations

import tensorflow as tf

from sskt_tf.config import AugmentationConfig

# Independent streams derived from one batch seed; pad-crop-flip uses the batch seed itself.
_RANDAUGMENT_STREAM = 1
_MIX_STREAM = 2


def pad_crop_flip(images, seed, padding: int = 4) -> tf.Tensor:
    """Random crop with zero padding, then random horizontal flip, for each image.

    Equivalent to torchvision's `RandomCrop(size, padding=padding)` followed by
    `RandomHorizontalFlip(0.5)` applied to every image independently, done for the
    whole batch with two gathers: `crop_flip(images, *pad_crop_flip_views(seed, B, padding))`.

    Args:
        images: uint8 or float tensor `[B, H, W, C]`.
        seed: int32/int64 tensor of shape `[2]` for the stateless random ops; the same
            seed and images give the same output.
        padding: zeros added on each side before cropping back to `[H, W]`; the crop
            offsets are uniform in `[0, 2 * padding]`, per image and per axis.

    Returns:
        float32 tensor `[B, H, W, C]`; values keep their range (e.g. 0..255).

    Raises:
        ValueError: `padding` is not an int >= 0.
    """
    _check_padding(padding)
    images = tf.convert_to_tensor(images)
    offsets, flip = pad_crop_flip_views(seed, tf.shape(images)[0], padding)
    return crop_flip(images, offsets, flip, padding)


def _check_padding(padding):
    if not isinstance(padding, int) or padding < 0:
        raise ValueError(f"padding must be an int >= 0, got {padding!r}")


def pad_crop_flip_views(seed, batch, padding: int = 4):
    """The random draws of `pad_crop_flip`: each image's crop offsets and flip.

    Args:
        seed: int32/int64 `[2]`, the stateless seed.
        batch: int or int32 scalar tensor, the number of images B.
        padding: as `pad_crop_flip`.

    Returns:
        `(offsets, flip)`: int32 `[2, B]` (row and column offsets into the padded image, each in
        `[0, 2 * padding]`) and bool `[B]`.
    """
    # int32 and int64 seeds drive different Philox streams; one dtype makes [1, 2] mean
    # the same thing whichever way the caller built it.
    seed = tf.cast(seed, tf.int64)
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=2))
    offsets = tf.random.stateless_uniform([2, batch], seed=crop_seed, minval=0, maxval=2 * padding + 1, dtype=tf.int32)
    flip = tf.random.stateless_uniform([batch], seed=flip_seed) < 0.5
    return offsets, flip


def crop_flip(images, offsets, flip, padding: int = 4) -> tf.Tensor:
    """Each image's given view: the `[H, W]` crop at `offsets` of the zero-padded image, flipped where `flip`.

    The deterministic half of `pad_crop_flip`; `--soft_label_cache=replay` uses it to rebuild the
    stored views exactly.

    Args:
        images: uint8 or float `[B, H, W, C]`.
        offsets: int32 `[2, B]`, row and column offsets into the image padded by `padding`, in
            `[0, 2 * padding]`.
        flip: bool `[B]`, horizontal flip after the crop.
        padding: zeros added on each side before cropping.

    Returns:
        float32 `[B, H, W, C]`.
    """
    _check_padding(padding)
    images = tf.convert_to_tensor(images)
    offsets = tf.cast(offsets, tf.int32)
    shape = tf.shape(images)
    height, width = shape[1], shape[2]
    padded = tf.pad(images, [[0, 0], [padding, padding], [padding, padding], [0, 0]])
    rows = offsets[0][:, None] + tf.range(height)[None, :]
    columns = tf.range(width)[None, :]
    # Flipping a crop is reading its columns backwards, so the flip folds into the
    # column gather instead of costing another pass over the batch.
    columns = tf.where(flip[:, None], width - 1 - columns, columns) + offsets[1][:, None]
    out = tf.gather(padded, rows, axis=1, batch_dims=1)
    out = tf.gather(out, columns, axis=2, batch_dims=1)
    out = tf.cast(out, tf.float32)
    out.set_shape(images.shape)
    return out


def _beta(seed, alpha):
    """One sample of Beta(alpha, alpha) from a stateless seed, as X / (X + Y) with X, Y ~ Gamma(alpha)."""
    gammas = tf.random.stateless_gamma([2], seed=seed, alpha=alpha, dtype=tf.float32)
    return gammas[0] / (gammas[0] + gammas[1])


def _permutation(seed, n):
    return tf.argsort(tf.random.stateless_uniform([n], seed=seed))


def mixup(images, labels, seed, alpha):
    """MixUp: `x = lam x + (1 - lam) x[perm]`, `y = lam y + (1 - lam) y[perm]`, one `lam ~ Beta(alpha, alpha)` per batch.

    As the authors' CIFAR code: one mixing weight for the whole batch, the partner of
    each example from a random permutation of the batch.

    Reference: H. Zhang, M. Cisse, Y. N. Dauphin, D. Lopez-Paz, "mixup: Beyond Empirical
    Risk Minimization", ICLR 2018.

    Args:
        images: float32 [B, H, W, C].
        labels: float32 [B, K], one-hot or multi-hot (or already soft).
        seed: int64 [2], stateless seed.
        alpha: Beta parameter > 0 (a Python float).

    Returns:
        `(images, labels, lam)`: the mixed float32 [B, H, W, C] and [B, K], and the float32
        scalar weight of the original batch.
    """
    beta_seed, perm_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=2))
    lam = _beta(beta_seed, alpha)
    perm = _permutation(perm_seed, tf.shape(images)[0])
    mixed_images = lam * images + (1.0 - lam) * tf.gather(images, perm)
    mixed_labels = lam * labels + (1.0 - lam) * tf.gather(labels, perm)
    return mixed_images, mixed_labels, lam


def cutmix(images, labels, seed, alpha):
    """CutMix: paste a box of `x[perm]` into `x`; labels mixed by the pasted area.

    As the authors' code: `lam ~ Beta(alpha, alpha)` and one box per batch, of sides
    `floor(H sqrt(1 - lam))` x `floor(W sqrt(1 - lam))` centred at a uniform pixel,
    clipped to the image; the label weight is then recomputed from the clipped box,
    `lam = 1 - box area / (H W)`.

    Reference: S. Yun, D. Han, S. J. Oh, S. Chun, J. Choe, Y. Yoo, "CutMix:
    Regularization Strategy to Train Strong Classifiers with Localizable Features",
    ICCV 2019.

    Args:
        images: float32 [B, H, W, C].
        labels: float32 [B, K].
        seed: int64 [2], stateless seed.
        alpha: Beta parameter > 0 (a Python float).

    Returns:
        `(images, labels, lam)`: the mixed float32 [B, H, W, C] and [B, K], and `lam`, the
        float32 scalar weight of the original labels (1 - the pasted share of the pixels).
    """
    beta_seed, perm_seed, centre_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=3))
    shape = tf.shape(images)
    height, width = shape[1], shape[2]
    lam = _beta(beta_seed, alpha)
    cut = tf.sqrt(1.0 - lam)
    cut_h = tf.cast(tf.cast(height, tf.float32) * cut, tf.int32)
    cut_w = tf.cast(tf.cast(width, tf.float32) * cut, tf.int32)
    centre = tf.random.stateless_uniform([2], seed=centre_seed, minval=0, maxval=tf.int32.max, dtype=tf.int32)
    cy, cx = centre[0] % height, centre[1] % width
    y1, y2 = tf.clip_by_value(cy - cut_h // 2, 0, height), tf.clip_by_value(cy + cut_h // 2, 0, height)
    x1, x2 = tf.clip_by_value(cx - cut_w // 2, 0, width), tf.clip_by_value(cx + cut_w // 2, 0, width)
    rows = tf.range(height)
    columns = tf.range(width)
    inside = ((rows >= y1) & (rows < y2))[:, None] & ((columns >= x1) & (columns < x2))[None, :]
    perm = _permutation(perm_seed, shape[0])
    mixed_images = tf.where(inside[None, :, :, None], tf.gather(images, perm), images)
    lam = 1.0 - tf.cast((y2 - y1) * (x2 - x1), tf.float32) / tf.cast(height * width, tf.float32)
    mixed_labels = lam * labels + (1.0 - lam) * tf.gather(labels, perm)
    return mixed_images, mixed_labels, lam


def mix_batch(images, labels, seed, mixup_alpha=0.0, cutmix_alpha=0.0, prob=1.0):
    """MixUp or CutMix for one batch, or neither: with probability `prob` the batch is mixed.

    With both alphas > 0, a mixed batch takes CutMix or MixUp with probability 1/2 each.

    Args:
        images: float32 [B, H, W, C].
        labels: float32 [B, K] (one-hot or multi-hot).
        seed: int32 or int64 [2], stateless seed.
        mixup_alpha, cutmix_alpha: Beta parameters (Python floats); 0 disables that kind.
        prob: probability of mixing the batch, in (0, 1] (a Python float; 1 mixes every batch).

    Returns:
        `(images, labels)`, float32 [B, H, W, C] and [B, K]; unchanged when neither kind is on.
    """
    seed = tf.cast(seed, tf.int64)
    gate_seed, mixup_seed, cutmix_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=3))
    gates = tf.random.stateless_uniform([2], seed=gate_seed)
    unchanged = lambda: (images, labels)  # noqa: E731
    do_mixup = lambda: mixup(images, labels, mixup_seed, mixup_alpha)[:2]  # noqa: E731
    do_cutmix = lambda: cutmix(images, labels, cutmix_seed, cutmix_alpha)[:2]  # noqa: E731
    if mixup_alpha > 0 and cutmix_alpha > 0:
        mixed = lambda: tf.cond(gates[1] < 0.5, do_cutmix, do_mixup)  # noqa: E731
    elif mixup_alpha > 0:
        mixed = do_mixup
    elif cutmix_alpha > 0:
        mixed = do_cutmix
    else:
        return images, labels
    if prob >= 1.0:
        return mixed()
    return tf.cond(gates[0] < prob, mixed, unchanged)


class KerasCVRandAugment:
    """keras-cv's RandAugment on float images in 0..255, its randomness taken from a per-batch seed.

    keras-cv draws from `tf.random.Generator`s held by its layers (plus, for the
    brightness and contrast factors, stateful `tf.random.uniform` ops, which no seed
    can rewind). Here those factors draw from one more generator, and before each batch
    every generator is reset to a state derived from the batch's seed. The batch's
    result is then a function of its seed alone, as for the stateless operations,
    provided that batches pass one at a time (`sequential`): two batches in flight at
    once would interleave their draws on the shared generators (the images stay
    correctly augmented, but which draw goes to which batch then depends on timing).

    The magnitude is fixed (`magnitude_stddev=0`), as in the RandAugment paper; each
    chosen operation is applied with keras-cv's default rate 10/11.

    Reference: E. D. Cubuk, B. Zoph, J. Shlens, Q. V. Le, "RandAugment: Practical
    automated data augmentation with a reduced search space", CVPR Workshops 2020.

    Args:
        layers: operations applied per image (RandAugment's N, keras-cv's `augmentations_per_image`).
        magnitude: strength of every operation in [0, 1] (keras-cv's scale; RandAugment's M / 10).

    Call arguments:
        images: float32 (or uint8) [B, H, W, 3], values in 0..255.
        seed: int32 or int64 [2], the batch's stateless seed.

    Returns (call):
        float32 [B, H, W, 3], clipped to 0..255.
    """

    def __init__(self, layers=2, magnitude=0.5):
        import keras
        import keras_cv  # Imported here: only RandAugment needs keras-cv.

        def build():
            return keras_cv.layers.RandAugment(
                value_range=(0, 255),
                augmentations_per_image=int(layers),
                magnitude=float(magnitude),
                magnitude_stddev=0.0,
                seed=0,
            )

        try:
            self.layer = build()
        except RuntimeError:
            # Some keras-cv layers take TF's global generator at construction, which op determinism
            # (--deterministic) forbids until one is set. Each layer gets a private one below anyway.
            tf.random.set_global_generator(tf.random.Generator.from_seed(0))
            self.layer = build()
        factors = tf.random.Generator.from_seed(0)
        # Visit order (attribute order) is the same in every run, so state i always goes to the same generator.
        generators = [factors]
        uniform_sampler = keras_cv.core.UniformFactorSampler

        class _GeneratorUniformFactor(uniform_sampler):
            def __call__(self, shape=(), dtype="float32"):
                return factors.uniform(shape, self.lower, self.upper, dtype=dtype)

        seen = set()

        def visit(layer):
            if id(layer) in seen:
                return
            seen.add(id(layer))
            if isinstance(getattr(layer, "_random_generator", None), tf.random.Generator):
                # A private generator per layer: some share TF's global one, which must not be reset here.
                layer._random_generator = tf.random.Generator.from_seed(len(generators))
                generators.append(layer._random_generator)
            for name, value in list(vars(layer).items()):
                if type(value) is uniform_sampler:
                    setattr(layer, name, _GeneratorUniformFactor(value.lower, value.upper))
                for item in value if isinstance(value, (list, tuple)) else (value,):
                    if isinstance(item, keras.layers.Layer):
                        visit(item)

        visit(self.layer)
        self._generators = generators

    def __call__(self, images, seed):
        states = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=len(self._generators))
        for generator, state in zip(self._generators, tf.unstack(states)):
            generator.reset(tf.concat([state, tf.zeros([1], tf.int64)], axis=0))
        out = self.layer(tf.cast(images, tf.float32))
        return tf.clip_by_value(tf.cast(out, tf.float32), 0.0, 255.0)


class BatchAugmenter:
    """Applies an `AugmentationConfig` to `(images, labels)` batches in a tf.data pipeline.

    The pipeline (`sskt_tf.data`) calls `geometric`, then `randaugment_stage`, then `mix` on each
    batch, each with the batch's seed.

    Args:
        augmentation: the `sskt_tf.config.AugmentationConfig`.
        num_classes: label classes; mixing turns int labels into one-hot rows of this width.
        multi_label: labels are already float multi-hot `[B, num_classes]`.

    Attributes:
        sequential: RandAugment is on and batches must pass one at a time for bit-exact
            reproducibility (see `KerasCVRandAugment`).
    """

    def __init__(self, augmentation: AugmentationConfig, num_classes: int, multi_label: bool = False):
        self.augmentation = augmentation
        self.num_classes = int(num_classes)
        self.multi_label = multi_label
        self.randaugment = (
            KerasCVRandAugment(augmentation.randaugment_layers, augmentation.randaugment_magnitude)
            if augmentation.kind == "randaugment"
            else None
        )
        self.sequential = self.randaugment is not None

    def geometric(self, images, seed):
        """The stateless first stage (pad-crop-flip), or a cast when `kind` is "none".

        Args:
            images: uint8 or float [B, H, W, C], values in 0..255.
            seed: int32 or int64 [2], the batch's stateless seed.

        Returns:
            float32 [B, H, W, C], values in 0..255.
        """
        if self.augmentation.kind == "none":
            return tf.cast(images, tf.float32)
        return pad_crop_flip(images, seed, self.augmentation.padding)

    def randaugment_stage(self, images, seed):
        """RandAugment of float32 [B, H, W, 3] images in 0..255 (`KerasCVRandAugment`), or the images as they are.

        Draws from its own stream of the batch's seed (int32 or int64 [2]), independent of the other stages'.
        """
        if self.randaugment is None:
            return images
        return self.randaugment(images, tf.random.experimental.stateless_fold_in(tf.cast(seed, tf.int64), _RANDAUGMENT_STREAM))

    def mix(self, images, labels, seed):
        """MixUp/CutMix of the batch (`mix_batch`), with labels as float rows; without mixing, labels pass unchanged.

        Args:
            images: float32 [B, H, W, C].
            labels: int [B] class indices, or float32 [B, num_classes] multi-hot when `multi_label`.
            seed: int32 or int64 [2], the batch's stateless seed (mixing draws from its own stream of it).

        Returns:
            `(images, labels)`: labels float32 [B, num_classes] when mixing is on, else as given.
        """
        a = self.augmentation
        if not a.mixes:
            return images, labels
        if not self.multi_label:
            labels = tf.one_hot(tf.cast(labels, tf.int32), self.num_classes, dtype=tf.float32)
        seed = tf.random.experimental.stateless_fold_in(tf.cast(seed, tf.int64), _MIX_STREAM)
        return mix_batch(images, tf.cast(labels, tf.float32), seed, a.mixup, a.cutmix, a.mix_prob)
