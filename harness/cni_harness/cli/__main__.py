"""`python -m cni_harness.cli ARGS`: the same as `cni-harness ARGS`."""

import sys

from . import main

sys.exit(main())
