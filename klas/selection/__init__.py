"""Selection: anchor chain, configurations, buckets, τ and coverage; the baseline distances and methods; exchange formats."""
from klas._exports import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "select": "select",
    "select_pair": "select",
    "select_snnet_nearest": "select",
    "select_random": "select",
    "select_on_snnet_chain": "select",
    "read_selection": "select",
    "configurations": "select",
    "Selection": "select",
    "PairSelection": "select",
    "Config": "select",
    "SelectOptions": "options",
    "SelectSection": "options",
    "Method": "methods",
    "register_method": "methods",
    "run_method": "methods",
    "get_method": "methods",
    "method_names": "methods",
    "cross_entropy": "metrics",
    "metric_numerators": "metric_tables",
    "to_snnet": "export",
    "from_snnet": "export",
    "to_snnet_configs": "snnet_bridge",
    "from_snnet_configs": "snnet_bridge",
    "write_csv": "export",
})
