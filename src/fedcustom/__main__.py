"""`python -m fedcustom` is the `fedcustom` command."""

import sys

from fedcustom.cli import main

sys.exit(main())
