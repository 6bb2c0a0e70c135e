"""The pipeline: the run config, `klas run` with its resumable stages, the demo, the `klas` command."""
from klas._exports import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "RunConfig": "config",
    "load_config": "config",
    "validate_config": "config",
    "stage_fingerprint": "config",
    "prepare": "run",
    "run_recovery": "run",
    "main": "cli",
})
