"""Input pipelines for SSKT: TFDS (CIFAR, STL-10, VOC 2007, any `tfds:<name>`), image folders, synthetic data,
and videos (UCF101, HMDB51, folders of videos, synthetic videos).

`load` returns a `Datasets` whose `train` stream is infinite, shuffled, batched and
augmented (by default like the reference PyTorch code: RandomCrop(size, padding=4) with
zero fill, then RandomHorizontalFlip(p=0.5); see `sskt_tf.augment` for RandAugment,
MixUp and CutMix), and whose `test` stream is one un-augmented pass. Images leave the
pipeline as float32 in 0..255 (models normalise inside); labels as int32 class indices,
float32 multi-hot rows for multi-label data, or float32 soft rows when batches are mixed.

Determinism: decoding maps keep their order, shuffling uses `seed`, and augmentation
draws from the batch's seed `[seed, batch index]`, so a fixed `seed` gives the same
training stream in every run (with RandAugment, when `deterministic`). (A global TF seed, e.g. from
`keras.utils.set_random_seed`, also feeds into the shuffle order, as everywhere in
tf.data.)

Layout, as big_vision's `datasets/`:
    load.py       `load`, `Datasets`, and `KINDS`, the table from `--dataset` to the module of its kind
    pipeline.py   splits, hold-out and subset, caches, the training and evaluation streams, resizing
    tfds.py       TFDS datasets (fails fast offline)
    folder.py     image folders and the check that every image decodes (cached)
    synthetic.py  generated single- and multi-label data
    video.py      video datasets: Hara et al.'s clip sampling and the clip streams (`Datasets.clip_length`)
    video_index.py  the videos of UCF101, HMDB51 and video folders, with their split lists
"""

from sskt_tf.data.load import Datasets, load

__all__ = ["Datasets", "load"]
