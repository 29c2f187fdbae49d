"""The one configuration tree: YAML file + ``key=value`` overrides, defaults and checks from one JSON-Schema."""
from __future__ import annotations

import copy
import functools
import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

import re

import jsonschema
import yaml

from .registry import ConfigError


# libyaml's parser where PyYAML was built with it (about 8x faster: every job parses the schema)
_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_SafeLoader):
    """YAML 1.1 reads 1e-3 as a string; researchers write learning rates that way, so read it as a float."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def parse_yaml(text: str):
    return yaml.load(text, Loader=_Loader)

SCHEMA_RESOURCE = ("nas.schema", "config.schema.yaml")


@functools.lru_cache(maxsize=1)
def schema() -> dict[str, Any]:
    text = resources.files(SCHEMA_RESOURCE[0]).joinpath(SCHEMA_RESOURCE[1]).read_text()
    return yaml.load(text, Loader=_SafeLoader)


def _validator_with_defaults():
    base = jsonschema.Draft202012Validator
    validate_properties = base.VALIDATORS["properties"]

    def fill_defaults(validator, properties, instance, subschema):
        if isinstance(instance, dict):
            for key, sub in properties.items():
                if "default" in sub and key not in instance:
                    instance[key] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, subschema)

    return jsonschema.validators.extend(base, {"properties": fill_defaults})


_DefaultingValidator = _validator_with_defaults()


def _path(error: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "<top level>"


def _declared_keys(subschema: dict[str, Any]) -> set[str]:
    """The keys a section declares: its own ``properties`` and those of the local ``$ref`` it extends."""
    keys = set(subschema.get("properties", {}))
    ref = subschema.get("$ref", "")
    if ref.startswith("#/$defs/"):
        keys |= _declared_keys(schema()["$defs"][ref.removeprefix("#/$defs/")])
    return keys


def _describe(error: jsonschema.ValidationError) -> str:
    where = _path(error)
    if error.validator in ("additionalProperties", "unevaluatedProperties"):
        allowed = sorted(_declared_keys(error.schema))
        extra = sorted(set(error.instance) - set(allowed))
        prefix = "" if where == "<top level>" else where + "."
        return f"unknown config key {', '.join(prefix + k for k in extra)!r}; allowed here: {', '.join(allowed)}"
    if error.validator == "enum":
        return f"config key {where!r}: {error.instance!r} is not allowed; allowed: {', '.join(map(str, error.validator_value))}"
    if error.validator == "type":
        return f"config key {where!r}: {error.instance!r} has the wrong type; expected {error.validator_value}"
    if error.validator == "uniqueItems":
        return f"config key {where!r}: {error.instance!r} holds duplicates"
    if error.validator == "minItems":
        return f"config key {where!r}: {error.instance!r} is empty; give at least {error.validator_value} item(s)"
    return f"config key {where!r}: {error.message}"


def validate(cfg: dict[str, Any]) -> dict[str, Any]:
    """Fill defaults in place and check ``cfg``; raise ConfigError naming the key, value and what is allowed."""
    if not isinstance(cfg, dict):
        raise ConfigError(f"a config must be a mapping of keys to values, got {type(cfg).__name__}")
    validator = _DefaultingValidator(schema())
    errors = sorted(validator.iter_errors(cfg), key=lambda e: (len(list(e.absolute_path)), _path(e)))
    if errors:
        raise ConfigError("; ".join(_describe(e) for e in errors[:5]))
    for key, splits in (("dataset.splits", cfg["dataset"]["splits"]), ("supernet.splits", cfg["supernet"]["splits"]),
                        ("train.splits", cfg["train"]["splits"])):
        if splits is not None and sum(splits.values()) > 1.0 + 1e-9:
            raise ConfigError(f"config key {key!r}: fractions {splits} add up to more than 1")
    col = cfg["task"]["col"]
    if (col["bins"] == "file") != (col["bins_file"] is not None):
        raise ConfigError(f"config key 'task.col.bins_file' is {col['bins_file']!r} and 'task.col.bins' is "
                          f"{col['bins']!r}: a bins file is read exactly when task.col.bins is 'file' "
                          "(allowed: zhang313, srgb_gamut, file)")
    return cfg


def stage_dataset(cfg: dict[str, Any], section: str) -> dict[str, Any]:
    """The ``dataset`` section as stage ``section`` (``supernet``, ``train``, ``differentiable``) loads it: its own
    splits, if set."""
    training = cfg[section]["training"] if section == "differentiable" else cfg[section]
    splits = training["splits"]
    return cfg["dataset"] if splits is None else {**cfg["dataset"], "splits": splits}


def read_yaml(path: str | Path) -> dict[str, Any]:
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"config file {str(file)!r} does not exist")
    try:
        data = parse_yaml(file.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {str(file)!r} is not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(file)!r} must hold a mapping at top level, got {type(data).__name__}")
    return data


def apply_overrides(cfg: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        try:
            value = parse_yaml(raw) if raw != "" else None
        except yaml.YAMLError as err:
            raise ConfigError(f"override {item!r}: value is not valid YAML ({err})") from None
        node = cfg
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part!r} holds a value, not a section")
            node = child
        node[parts[-1]] = value
    return cfg


def load_config(path: str | Path | None, overrides: Iterable[str] = ()) -> dict[str, Any]:
    cfg = read_yaml(path) if path else {}
    return validate(apply_overrides(cfg, overrides))


def config_hash(cfg: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:12]


def flatten(cfg: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out
