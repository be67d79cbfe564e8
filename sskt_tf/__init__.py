"""sskt_tf: Self-Supervised Knowledge Transfer (Hong et al., WACV 2022) in Keras 3 / TensorFlow.

Importing the package registers its Keras layers and models, so `.keras`
files that contain them load with `keras.saving.load_model`.
"""

from sskt_tf import heads, losses, sources
from sskt_tf.errors import UserError
from sskt_tf.models import CifarResNet, ImageNormalization
from sskt_tf.sskt import SSKTModel

__version__ = "0.1.0"

__all__ = ["CifarResNet", "ImageNormalization", "SSKTModel", "UserError", "heads", "losses", "sources"]
