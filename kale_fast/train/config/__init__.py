"""Training configuration: six sections of keys (sections.py), put together and read from flat keys by TrainConfig
(train_config.py), from YAML files (yaml_file.py); how a key is declared and checked (keys.py)."""
from kale_fast.train.config.keys import SEED_LIMIT, unavailable_device
from kale_fast.train.config.sections import (BASES, FLOW_BASES, OBJECTIVES, SAMPLERS, DataConfig, ModelConfig,
                                             ObjectiveConfig, OptimiserConfig, RunConfig, SamplingConfig)
from kale_fast.train.config.train_config import (FAITHFUL_OPTIONS, KEY_SECTIONS, RESUMABLE_CHANGES, SECTIONS,
                                                 TrainConfig)

__all__ = ["BASES", "DataConfig", "FAITHFUL_OPTIONS", "FLOW_BASES", "KEY_SECTIONS", "ModelConfig", "OBJECTIVES",
           "ObjectiveConfig", "OptimiserConfig", "RESUMABLE_CHANGES", "RunConfig", "SAMPLERS", "SECTIONS",
           "SEED_LIMIT", "SamplingConfig", "TrainConfig", "unavailable_device"]
