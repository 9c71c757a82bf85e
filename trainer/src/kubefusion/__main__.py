"""``python -m kubefusion`` (and ``torchrun -m kubefusion train ...``) runs the command line."""

import sys

from kubefusion.cli import main

sys.exit(main())
