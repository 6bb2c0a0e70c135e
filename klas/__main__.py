"""`python -m klas …` runs the `klas` command."""
import sys

from klas.cli import main

sys.exit(main())
