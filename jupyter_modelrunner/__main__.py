"""`python -m jupyter_modelrunner` is the same as `jupyter modelrunner`."""

import sys

from .cli import main

sys.exit(main())
