"""The baselines SSKT is compared against, as Keras models on `sskt_tf.models.TrainingModel`.

- `KDModel`: a `TargetModel` distilled from a frozen teacher (Hinton et al., 2015).
- `DMLModel`: deep mutual learning of K `TargetModel` peers (Zhang et al., CVPR 2018).
- `MAXLModel`: a multi-task `TargetModel` and a label-generation network (Liu et al., NeurIPS 2019).

Training from scratch is `SSKTModel` without sources. `sskt_tf.methods` builds any of them from a `Config`.
"""

from sskt_tf.baselines.dml import DMLModel
from sskt_tf.baselines.kd import KDModel
from sskt_tf.baselines.maxl import MAXLModel, build_label_generator

__all__ = ["DMLModel", "KDModel", "MAXLModel", "build_label_generator"]
