"""MooseFS-style configuration files: `KEY = VALUE` lines, `#` comments.

Each daemon declares its keys with a type and a default (`Option`). Unknown keys produce a
warning (MooseFS does the same, and it keeps old configs working); a value that does not
parse stops the daemon with a message naming the file, the line and the key.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

log = logging.getLogger("elkfs.config")


class ConfigError(Exception):
    pass


def _bool(text: str) -> bool:
    low = text.lower()
    if low in ("1", "yes", "true", "on"):
        return True
    if low in ("0", "no", "false", "off"):
        return False
    raise ValueError(f"expected 0 or 1, got {text!r}")


def _port(text: str) -> int:
    value = int(text)
    if not 0 < value < 65536:
        raise ValueError(f"port {value} out of range 1-65535")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise ValueError(f"must be positive, got {value}")
    return value


def _nonneg_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(f"must be 0 or more, got {value}")
    return value


def ranged_int(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}, got {value}")
        return value

    return parse


def _nonneg_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise ValueError(f"must be 0 or more, got {value}")
    return value


PARSERS: dict[str, Callable[[str], Any]] = {
    "str": str,
    "int": _nonneg_int,
    "float": _positive_float,
    "nonneg_float": _nonneg_float,
    "bool": _bool,
    "port": _port,
}


@dataclass(frozen=True)
class Option:
    default: Any
    kind: str | Callable[[str], Any] = "str"
    doc: str = ""

    def parse(self, text: str) -> Any:
        parser = PARSERS[self.kind] if isinstance(self.kind, str) else self.kind
        return parser(text)


class Config:
    """Parsed values, read as attributes: `cfg.DATA_PATH`."""

    def __init__(self, options: dict[str, Option], values: dict[str, Any], path: str | None):
        self._options = options
        self._values = values
        self.path = path

    def __getattr__(self, key: str) -> Any:
        try:
            return self._values[key]
        except KeyError:
            raise AttributeError(key) from None

    def as_dict(self) -> dict[str, Any]:
        return dict(self._values)


def parse_text(text: str, options: dict[str, Option], path: str = "<config>",
               overrides: dict[str, str] | None = None) -> Config:
    values = {key: opt.default for key, opt in options.items()}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if "=" not in line:
            raise ConfigError(f"{path}:{lineno}: expected KEY = VALUE, got {raw.strip()!r}")
        key, value = (part.strip() for part in line.split("=", 1))
        if key not in options:
            log.warning("%s:%d: unknown option %s (ignored)", path, lineno, key)
            continue
        try:
            values[key] = options[key].parse(value)
        except ValueError as e:
            raise ConfigError(f"{path}:{lineno}: bad value for {key}: {e}") from None
    for key, value in (overrides or {}).items():
        if key not in options:
            raise ConfigError(f"unknown option {key}")
        try:
            values[key] = options[key].parse(value)
        except ValueError as e:
            raise ConfigError(f"bad value for {key}: {e}") from None
    return Config(options, values, path)


def load(path: str | None, options: dict[str, Option], required: bool = False,
         overrides: dict[str, str] | None = None) -> Config:
    """Read a config file; a missing file means all defaults unless `required`."""
    text = ""
    if path is not None:
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            if required:
                raise ConfigError(f"{path}: config file not found") from None
            log.info("%s not found, using defaults", path)
        except OSError as e:
            raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    return parse_text(text, options, path or "<defaults>", overrides)
