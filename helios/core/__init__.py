"""helios-ml's core: registries, RNGs, CUDA and distributed helpers, loggers, small utilities.

Programs written for helios-ml import these as ``helios.core`` (``import helios.core as
hlc``); every name helios-ml 1.4.1 exports here is here.
"""

from helios.core import cuda, distributed, logging, rng
from helios.core.utils import (
    AverageTimer,
    ChdirContext,
    Registry,
    convert_to_list,
    get_env_info_str,
    get_from_optional,
    safe_torch_load,
    update_all_registries,
)

__all__ = [
    "AverageTimer",
    "ChdirContext",
    "Registry",
    "convert_to_list",
    "cuda",
    "distributed",
    "get_env_info_str",
    "get_from_optional",
    "logging",
    "rng",
    "safe_torch_load",
    "update_all_registries",
]
