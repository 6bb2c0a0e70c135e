"""`python -m klas …` runs the `klas` command (also as `torchrun … -m klas run CONFIG`).

`record` hands an unexpected exception's traceback to torchrun, which then prints it under the
failed rank in its summary; outside torchrun it changes nothing.
"""
import sys

from torch.distributed.elastic.multiprocessing.errors import record

from klas.pipeline.cli import main

sys.exit(record(main)())
