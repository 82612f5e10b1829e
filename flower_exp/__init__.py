"""flower-exp: an experiment-tracking sweep harness for image classification."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("flower-exp")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+source"
