"""Pydantic validation errors turned into messages that never quote input values."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from clawql_secrets.errors import ConfigError


def describe_validation_error(exc: ValidationError) -> str:
    """Field paths and messages only: pydantic's own text quotes input values."""
    parts = []
    for err in exc.errors(include_url=False, include_input=False, include_context=False):
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


M = TypeVar("M", bound=BaseModel)


def load_model(path: Path, model: type[M], what: str) -> M:
    """A config file (YAML or JSON) validated as ``model``; ConfigError naming ``what``."""
    try:
        raw = yaml.safe_load(path.read_bytes())
    except FileNotFoundError as exc:
        raise ConfigError(f"the {what} {path} does not exist") from exc
    except OSError as exc:
        raise ConfigError(f"the {what} {path} cannot be read") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"the {what} {path} is not valid JSON/YAML") from exc
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(
            f"the {what} {path} is invalid: {describe_validation_error(exc)}"
        ) from exc
