"""`python -m klas …` runs the `klas` command (also as `torchrun … -m klas run CONFIG`, or as the
tasks of `srun -n N python -m klas run CONFIG`, which take their ranks from SLURM's variables).

Under torchrun, `record` hands an unexpected exception's traceback to torchrun, which then prints it
under the failed rank in its summary; outside torchrun it would change nothing, and importing it
would load torch before `--help` could answer, so it is left out there.
"""
import sys

from klas.distributed import adopt_slurm_ranks, launched_by_torchrun
from klas.pipeline.cli import main

adopt_slurm_ranks()  # `srun -n N python -m klas run …` without torchrun: ranks from SLURM's variables
if launched_by_torchrun():
    from torch.distributed.elastic.multiprocessing.errors import record

    main = record(main)
sys.exit(main())
