import sys

from klas.cli import main

sys.exit(main())
