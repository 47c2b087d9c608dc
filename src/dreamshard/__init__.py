"""DreamShard: learned embedding table placement, measured on real FBGEMM kernels."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("dreamshard")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
