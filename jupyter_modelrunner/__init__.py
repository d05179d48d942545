"""jupyter-modelrunner: Docker Model Runner's workflow inside Jupyter.

Importing the package is cheap: the store, distribution and engines load on first use.
"""

from ._version import __version__

__all__ = ["__version__"]
