"""sskt_tf: Self-Supervised Knowledge Transfer (Hong et al., WACV 2022) in Keras 3 / TensorFlow."""

from setuptools import find_packages, setup

setup(
    name="sskt_tf",
    version="0.1.0",
    description="Self-Supervised Knowledge Transfer via Loosely Supervised Auxiliary Tasks, in Keras 3 / TensorFlow.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["sskt_tf", "sskt_tf.*"]),
    python_requires=">=3.10",
    install_requires=[
        "tensorflow>=2.16",
        "keras>=3.5",
        "tensorflow-datasets>=4.9",
        "keras-cv>=0.9",
        "absl-py",
        "numpy",
        # tfds.load needs importlib_resources through etils[epath]; pip check does not notice it missing.
        "etils[epath]",
        "importlib_resources",
        # tensorflow no longer brings TensorBoard, and every run writes TensorBoard logs.
        "tensorboard",
        # The confusion-matrix picture of python -m sskt_tf.evaluate (keras-cv's plot_image_gallery needs it too).
        "matplotlib",
    ],
    # torch only reads PyTorch checkpoints (python -m sskt_tf.convert_torch); a CPU build is enough.
    # plots: the comparison runner's picture (python -m sskt_tf.compare writes its table without it).
    extras_require={
        "dev": ["pytest>=7", "pytest-xdist>=3", "torch==2.13.0", "nbclient", "nbformat", "ipykernel"],
        "torch": ["torch==2.13.0"],
        "plots": ["matplotlib"],
    },
    entry_points={
        "console_scripts": [
            "sskt-train=sskt_tf.train:run",
            "sskt-export=sskt_tf.export:run",
            "sskt-evaluate=sskt_tf.evaluate:run",
            "sskt-predict=sskt_tf.predict:run",
            "sskt-compare=sskt_tf.compare:run",
            "sskt-convert-torch=sskt_tf.convert_torch:run",
        ]
    },
)
