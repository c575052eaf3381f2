"""Configuration only: yacs defaults per task, the YAML files, and loading / validating YAML + ``KEY VALUE``
overrides."""

from configs.loading import ConfigError, get_defaults, load_config

__all__ = ["ConfigError", "get_defaults", "load_config"]
