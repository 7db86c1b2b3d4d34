"""`python -m redbarn` is the same as the `redbarn` console script."""

import sys

from redbarn.cli import main

sys.exit(main())
