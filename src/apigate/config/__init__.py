"""Configuration: YAML -> validated, immutable :class:`Config`."""

from apigate.config.loader import ConfigError, json_schema, load_config, parse_config
from apigate.config.model import Config

__all__ = ["Config", "ConfigError", "json_schema", "load_config", "parse_config"]
