"""`python -m quantize` runs the quantize command line."""

import sys

from quantize.cli import main

sys.exit(main())
