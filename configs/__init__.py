"""Configs: yacs defaults per task, YAML + ``KEY VALUE`` loading, and the command line shared by the scripts."""

from configs.loading import ConfigError, get_defaults, load_config

__all__ = ["ConfigError", "get_defaults", "load_config"]
