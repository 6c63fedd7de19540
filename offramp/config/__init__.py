"""Small frozen config objects, one per concern, validated at the edge.

base.py: loading (YAML, flags, --set) and ConfigError; tag.py: a tagging run; train.py: the
settings every training run shares (offramp.training.config adds the mechanism sections);
calibrate.py, plan.py, serve.py: the other commands; cli.py: flags generated from the fields. No torch
or ray here: the command line reads these before anything heavy is imported.
"""

from offramp.config.base import DTYPES, ConfigError, MlflowConfig, field_docs, from_dict, load_config, require
from offramp.config.calibrate import CalibrateConfig
from offramp.config.plan import PlanConfig
from offramp.config.serve import ServeConfig
from offramp.config.tag import (
    EXIT_MODES,
    SENTENCE_POOLS,
    AuditConfig,
    ExitConfig,
    RayConfig,
    StageConfig,
    TagConfig,
    TokenExitConfig,
    check_token_exit,
)
from offramp.config.train import TrainSettings

__all__ = [
    "DTYPES",
    "EXIT_MODES",
    "SENTENCE_POOLS",
    "AuditConfig",
    "CalibrateConfig",
    "ConfigError",
    "ExitConfig",
    "MlflowConfig",
    "PlanConfig",
    "RayConfig",
    "ServeConfig",
    "StageConfig",
    "TagConfig",
    "TokenExitConfig",
    "TrainSettings",
    "check_token_exit",
    "field_docs",
    "from_dict",
    "load_config",
    "require",
]
