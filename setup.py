"""sskt_tf: Self-Supervised Knowledge Transfer (Hong et al., WACV 2022) in Keras 3 / TensorFlow."""

from setuptools import find_packages, setup

# The repository's address. The README's Colab badges and the notebooks (which clone it) hold copies:
# python .ci/set_repository.py <https://github.com/owner/name> sets all of them.
REPOSITORY = "https://github.com/OWNER/sskt_tf"

setup(
    name="sskt_tf",
    version="0.1.0",
    description="Self-Supervised Knowledge Transfer via Loosely Supervised Auxiliary Tasks, in Keras 3 / TensorFlow.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    url=REPOSITORY,
    # The repository's flags/*.cfg ship inside the package as sskt_tf/flags/, where --config=<name> finds
    # them after a non-editable install (pip install .); a checkout or editable install reads flags/ itself.
    packages=[*find_packages(include=["sskt_tf", "sskt_tf.*"]), "sskt_tf.flags"],
    package_dir={"sskt_tf.flags": "flags"},
    package_data={"sskt_tf.flags": ["*.cfg"]},
    python_requires=">=3.10",
    install_requires=[
        "tensorflow>=2.16",
        "keras>=3.5",
        # --sources=keras_hub:<preset>: keras-cv has been frozen since 2024; KerasHub is where pretrained Keras models are maintained.
        "keras-hub>=0.32",
        "tensorflow-datasets>=4.9",
        "keras-cv>=0.9",
        "absl-py",
        "numpy",
        # tfds.load needs importlib_resources through etils[epath]; pip check does not notice it missing.
        "etils[epath]",
        "importlib_resources",
        # tensorflow no longer brings TensorBoard, and every run writes TensorBoard logs.
        "tensorboard",
        # The confusion-matrix picture of python -m sskt_tf.evaluate and compare's comparison.png (keras-cv's
        # plot_image_gallery needs it too).
        "matplotlib",
        # PyAV: FFmpeg's decoders for the .avi/.mp4 of prepare_video and video_folder:, a maintained wheel with FFmpeg inside (17: frame rotation, scaler threads).
        "av>=17",
        # Pillow writes the videos' JPEG frames; matplotlib depends on it already.
        "pillow",
    ],
    # pip install . (or -e .) is everything a user needs. torch only reads PyTorch checkpoints
    # (python -m sskt_tf.convert_torch; a CPU build is enough); dev: the tests and notebook runs.
    extras_require={
        "torch": ["torch==2.13.0"],
        "dev": ["pytest>=7", "pytest-xdist>=3", "torch==2.13.0", "nbclient", "nbformat", "ipykernel"],
    },
    entry_points={
        "console_scripts": [
            "sskt-train=sskt_tf.train:run",
            "sskt-export=sskt_tf.export:run",
            "sskt-evaluate=sskt_tf.evaluate:run",
            "sskt-predict=sskt_tf.predict:run",
            "sskt-compare=sskt_tf.compare:run",
            "sskt-convert-torch=sskt_tf.convert_torch:run",
            "sskt-prepare-video=sskt_tf.prepare_video:run",
        ]
    },
)
