"""Experiment configuration: a TOML file validated into ``ExperimentConfig``.

Unknown keys and bad values are errors naming the key (``fleet.num_devices: ...``); the CLI prints
them as one line.
"""

from fl_sim.config.cloud import CloudConfig
from fl_sim.config.experiment import (
                                      NAME_PATTERN,
                                      DerivedTier,
                                      EvalConfig,
                                      ExperimentConfig,
                                      ModelsConfig,
                                      SimulationConfig,
                                      StrategyConfig,
                                      UserDomainConfig,
                                      explain_error,
                                      parse_config,
                                      tier_names,
)
from fl_sim.config.files import (
                                      LEGACY_VALUES,
                                      PATH_KEYS,
                                      load_config,
                                      load_run_config,
                                      read_toml,
                                      to_toml,
                                      with_legacy_values,
)
from fl_sim.config.fleet import FleetConfig, Range, ScheduleConfig
from fl_sim.config.mechanisms import AKDConfig, DWCConfig, UTSConfig
from fl_sim.config.section import Section

__all__ = ["AKDConfig", "CloudConfig", "DWCConfig", "DerivedTier", "EvalConfig", "ExperimentConfig", "FleetConfig",
           "LEGACY_VALUES",
           "ModelsConfig", "NAME_PATTERN", "PATH_KEYS", "Range", "ScheduleConfig", "Section", "SimulationConfig",
           "StrategyConfig", "UTSConfig", "UserDomainConfig", "explain_error", "load_config", "load_run_config",
           "parse_config", "read_toml", "tier_names", "to_toml", "with_legacy_values"]
