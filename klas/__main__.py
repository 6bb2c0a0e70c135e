"""`python -m klas …` runs the `klas` command (also as `torchrun … -m klas run CONFIG`).

Under torchrun, `record` hands an unexpected exception's traceback to torchrun, which then prints it
under the failed rank in its summary; outside torchrun it would change nothing, and importing it
would load torch before `--help` could answer, so it is left out there.
"""
import sys

from klas.distributed import launched_by_torchrun
from klas.pipeline.cli import main

if launched_by_torchrun():
    from torch.distributed.elastic.multiprocessing.errors import record

    main = record(main)
sys.exit(main())
