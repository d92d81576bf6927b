"""MELDAE-JAX: micro-expression spotting in conversational video, in JAX/Flax."""
import setuptools

CORE = [
    "jax>=0.11",
    "flax>=0.12",
    "optax>=0.2.8",
    "orbax-checkpoint>=0.12",
    "grain>=0.2.18",
    "tensorflow-datasets>=4.9.10",
    "array-record>=0.8",
    "einops>=0.8",
    "ml-collections>=1.1",
    "absl-py>=2.0",
    "numpy>=2.0",
    "scipy>=1.14",
    "safetensors>=0.4",        # timm/HF checkpoints
    "opencv-python-headless>=4.9,<5",  # video IO + Haar face cascades (dropped in 5)
    "imageio>=2.34",
    "imageio-ffmpeg>=0.5",     # mp4 writing for previews
    "pillow>=10",
    "openpyxl>=3.1",           # corpus spreadsheets (.xlsx)
    "pympi-ling>=1.70",        # ELAN .eaf annotations (WDMD)
    "tensorboardX>=2.6",       # TensorBoard events without TensorFlow
    "matplotlib>=3.8",         # plots / contact sheets
    "scikit-image>=0.24",
    "psutil>=5.9",
]

EXTRAS = {
    "test": ["pytest>=8", "pytest-xdist>=3.5"],
    # MKL's sgemm for the CPU Dense matmuls on Intel CPUs (meldae_jax/ops/blas_dot.py):
    # 5-20 % faster than XLA's own dots there (docs/performance.md, session 19). The
    # Makefile adds it on Intel hosts.
    "mkl": ["mkl>=2025; platform_system == 'Linux' and platform_machine == 'x86_64'"],
}

setuptools.setup(
    name="meldae_jax",
    version="0.1.0",
    description=__doc__,
    python_requires=">=3.12",
    packages=setuptools.find_packages(include=["meldae_jax", "meldae_jax.*"]),
    # C++ sources compiled on first use (meldae_jax/ops/native.py): the sgemm and
    # attention custom calls, the LayerNorm calls and the host allocator.
    package_data={"meldae_jax.ops": ["*.cc", "*.h"]},
    install_requires=CORE,
    extras_require=EXTRAS,
)
