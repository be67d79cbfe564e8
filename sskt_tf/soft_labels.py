"""The soft-label cache (`--soft_label_cache=clean`): each source's logits, computed once.

Sources are most of SSKT's cost: a ResNet-50 at 74 px is about 4x the FLOPs of a ResNet-20
training step. With the cache, every source runs once over the un-augmented training images;
training then reads the stored logits of each example (they travel with it through the
shuffled pipeline) and costs about as much as training from scratch.

It is an approximation, not the paper's method: the source sees the clean image while the
target sees its random crop and flip. `off` (the default) stays faithful.

Files are named by a key of everything the logits depend on (the data, the subset, the image
size, the source's spec, input size, BatchNorm mode, precision and a fingerprint of its
weights), so a changed source or dataset never reads stale logits, and runs that share them
can share the directory (`--soft_label_cache_dir`).
"""

import hashlib
import json
import os

import keras
import numpy as np


def fingerprint(source):
    """SHA-256 of a source's weights and the settings that change its logits.

    Also the weights' identity in a run's saved training state (`resumption.run_inputs`): another
    network copied over the same file is another source.

    Args:
        source: a built `sskt_tf.sources.Source` (or any layer with its `spec`, `image_size`,
            `source_bn` and `network`).

    Returns:
        str, the first 16 hex digits (64 bits) of the digest.
    """
    h = hashlib.sha256()
    fields = [source.spec, list(source.image_size), source.source_bn, source.network.dtype_policy.name]
    # What turns the network's outputs into logits; only where something does, so that the keys
    # of plain-logits sources (all sources before this existed) stay the same.
    adapted = [getattr(source, "network_outputs", "logits"), getattr(source, "stripped_activation", None)]
    if adapted != ["logits", None]:
        fields.append(adapted)
    h.update(json.dumps(fields).encode())
    for weight in source.network.weights:
        h.update(np.ascontiguousarray(weight.numpy()).tobytes())
    return h.hexdigest()[:16]


# Raised whenever the order of `Datasets.train_ordered` can change for the same data, so that no cache
# written in an older order is read (2: folder training files in a fixed pseudo-random order).
_ORDER_VERSION = 2


def data_key(config, data):
    """What the training images are and their order: dataset, location, hold-out and subset (both
    depend on the seed), skipped files, size.

    Args:
        config: the run's `Config` (reads `dataset`, `data_dir`, `train_subset`, `validation_split`,
            `seed`).
        data: the run's `sskt_tf.data.Datasets`.

    Returns:
        str, the first 16 hex digits of a SHA-256 of those fields.
    """
    seeded = config.train_subset or config.validation_split
    fields = [config.dataset, config.data_dir, config.train_subset, config.validation_split, data.validation_from,
              config.seed if seeded else None, list(data.bad_files), list(data.image_size), data.num_train,
              _ORDER_VERSION]
    return hashlib.sha256(json.dumps(fields).encode()).hexdigest()[:16]


def _compute(source, batches, count, verbose):
    """`source`'s logits over `batches` of `(images, labels)`, concatenated, with a progress bar over `count` images."""
    progress = keras.utils.Progbar(count, verbose=verbose, unit_name="image")
    logits, seen = [], 0
    for images, _ in batches:
        logits.append(source(images).numpy())
        seen += len(logits[-1])
        progress.update(seen)
    return np.concatenate(logits)


def load_or_compute(sources, data, config, directory, batch_size=256, log=print, verbose=1):
    """The logits of every source on every training image, in `data.train_ordered` order.

    Each source's logits are read from `<directory>/<data key>_<source name>_<fingerprint>.npy`
    when that file holds `[num_train, classes]` values, else computed on the un-augmented
    training images and written there atomically (a temporary file, then `os.replace`), so that an interrupted run
    leaves no partial file behind.

    Args:
        sources: the built `sskt_tf.sources.Source`s, in the model's order.
        data: the run's `sskt_tf.data.Datasets`; `train_ordered(batch_size)` yields the
            un-augmented training batches in a fixed order.
        config: the run's `Config` (see `data_key`).
        directory: where the `.npy` files are (created if missing); `--soft_label_cache_dir`, by
            default `<output_dir>/soft_label_cache`.
        batch_size: images per source call while computing (bounds the memory it takes).
        log: called with one line per source (read or computed).
        verbose: 1: a progress bar with the time left while a source's logits are computed
            (`keras.utils.Progbar`, on stdout); 2: one line when each is done; 0: none.

    Returns:
        list with one float32 array `[num_train, source classes]` per source (about
        `4 * num_train * classes` bytes each).

    Raises:
        OSError: `directory` cannot be created or a file in it cannot be read or written.
    """
    os.makedirs(directory, exist_ok=True)
    key = data_key(config, data)
    results = []
    for source in sources:
        path = os.path.join(directory, f"{key}_{source.name}_{fingerprint(source)}.npy")
        if os.path.exists(path):
            logits = np.load(path)
            if logits.shape == (data.num_train, source.num_classes):
                log(f"soft-label cache: {source.name} logits from {path}")
                results.append(logits)
                continue
        log(f"soft-label cache: computing {source.name} logits on {data.num_train} training images")
        logits = _compute(source, data.train_ordered(batch_size), data.num_train, verbose)
        tmp = f"{path}.tmp.npy"
        np.save(tmp, logits.astype(np.float32))
        os.replace(tmp, path)
        results.append(logits)
    return results
