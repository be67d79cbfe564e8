"""The baselines SSKT is compared against, as Keras models in SSKTModel's pattern.

- `KDModel`: knowledge distillation from a frozen teacher (Hinton et al., 2015).
- `DMLModel`: deep mutual learning of K peers (Zhang et al., CVPR 2018).
- `MAXLModel`: meta auxiliary learning with a label-generation network (Liu et al., NeurIPS 2019).

Training from scratch is `SSKTModel` without sources. `sskt_tf.methods` builds any of them from a `Config`.
"""

from sskt_tf.baselines.dml import DMLModel
from sskt_tf.baselines.kd import KDModel
from sskt_tf.baselines.maxl import MAXLModel, build_label_generator

__all__ = ["DMLModel", "KDModel", "MAXLModel", "build_label_generator"]
