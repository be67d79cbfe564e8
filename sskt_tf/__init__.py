"""sskt_tf: Self-Supervised Knowledge Transfer (Hong et al., WACV 2022) in Keras 3 / TensorFlow.

Importing the package registers its Keras layers and models, so `.keras`
files that contain them load with `keras.saving.load_model`.
"""

# First: TensorFlow's import, without its start-up noise on stderr (see there).
from sskt_tf.tf_import import import_tensorflow

import_tensorflow()

from sskt_tf import heads, losses, sources  # noqa: E402
from sskt_tf.errors import UserError  # noqa: E402
from sskt_tf.models import CifarResNet, ImageNormalization  # noqa: E402
from sskt_tf.sskt import SSKTModel  # noqa: E402

__version__ = "0.1.0"

__all__ = ["CifarResNet", "ImageNormalization", "SSKTModel", "UserError", "heads", "losses", "sources"]
