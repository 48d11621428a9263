"""umt_jax: training-efficient video foundation models (UMT, VideoMAE V2, vid-TLDR, MSTA) in JAX/Flax."""
from setuptools import find_packages, setup

CORE = [
    "jax>=0.10,<0.11",
    # ml_dtypes 0.7.0's import takes ~0.8 s more than 0.6.0's (its ufunc loops registered through numpy's
    # linear-search AddLoop: perf shows PyUFunc_AddLoop and tuple compares); every process start paid it (README,
    # Scale).
    "ml_dtypes>=0.5,<0.7",
    "flax>=0.12,<0.13",
    "optax>=0.2.8",
    "orbax-checkpoint>=0.12.8",
    "grain>=0.2.18",
    "array-record>=0.8.6",
    "tensorflow-datasets>=4.9.10",
    "importlib_resources",
    "einops>=0.8",
    "ml-collections>=1.1",
    "absl-py",
    "numpy",
    "pillow",
    "simplejpeg>=1.8",
    "tensorboardX>=2.6",
    "safetensors",
    "tokenizers>=0.20",
]
# torch is pinned: an unpinned torch pulls a multi-GB CUDA build.
TORCH = ["torch==2.13.0", "transformers>=5,<6"]
VIDEO = ["av>=18"]

setup(
    name="umt_jax",
    version="0.1.0",
    description=__doc__,
    python_requires=">=3.11",
    packages=find_packages(include=["umt_jax", "umt_jax.*", "data", "data.*"]),
    install_requires=CORE,
    extras_require={
        "torch": TORCH,
        "video": VIDEO,
        "test": ["pytest>=8", "psutil"] + TORCH + VIDEO,
    },
    entry_points={
        "console_scripts": [
            "umt-import-clip=umt_jax.convert.clip_import:main",
            "umt-export-torch=umt_jax.convert.torch_export:main",
            "umt-import-umt=umt_jax.convert.umt_import:main",
            "umt-import-videomae=umt_jax.convert.videomae_import:main",
            "umt-import-viclip=umt_jax.convert.viclip_import:main",
            "umt-import-bert=umt_jax.convert.bert_import:main",
            "umt-prepare-videos=data.prepare:main",
            "umt-synthetic-videos=data.synthetic:main",
        ],
    },
)
