"""Install keras-mtl: `pip install -e .[dev]`."""

from setuptools import find_packages
from setuptools import setup

# TF Serving's Python API must match the TensorFlow minor version that
# exports the SavedModel; both ranges move together.
TF_RANGE = ">=2.20,<2.22"

setup(
    name="keras-mtl",
    version="0.1.0",
    description="Keras 3 toolkit for multi-task ranking models",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["keras_mtl", "keras_mtl.*"]),
    python_requires=">=3.10",
    install_requires=[
        "keras>=3.10,<4",
        f"tensorflow{TF_RANGE}",
        "keras-tuner>=1.4.7",
        # Pairwise ranking losses (keras_mtl.ranking).
        "keras-rs>=0.4.0,<0.5",
        # KerasTuner imports it in every trial; TensorBoard logging of task
        # weights and gate diagnostics (keras_mtl.training).
        f"tensorboard{TF_RANGE}",
        "pandas>=2",
        f"tensorflow-serving-api{TF_RANGE}",
        # Parquet shards (keras_mtl.data.from_parquet) and YAML run configs.
        "pyarrow>=14",
        "pyyaml>=6",
        # keras_mtl.tuning plots the Pareto front (pareto.png).
        "matplotlib>=3.8",
    ],
    extras_require={
        "dev": [
            "pytest>=8",
            "pytest-xdist>=3.5",
            "ruff>=0.6",
            "scikit-learn>=1.4",
            "hypothesis>=6",
            "nbclient>=0.10",
            "ipykernel>=6",
            # tests/test_export.py checks the ONNX export (`onnx` extra).
            "onnx==1.23.2",
            "onnxruntime==1.31.1",
            "tf2onnx==1.17.0",
        ],
        "notebooks": ["jupyter", "matplotlib>=3.8"],
        "bench": ["psutil>=5", "matplotlib>=3.8"],
        # keras_mtl.export.export_onnx (Keras' ONNX export uses tf2onnx).
        "onnx": ["onnx==1.23.2", "onnxruntime==1.31.1", "tf2onnx==1.17.0"],
    },
    entry_points={"console_scripts": ["keras-mtl=keras_mtl.cli:main"]},
)
