"""Config machinery shared by every stage: strict pydantic models loaded from YAML with
`--set key=value` overrides, and errors that name the YAML file and line.

Each stage keeps its own config model beside its code (`train/config.py`, `serve/config.py`, ...);
defaults live only in those models.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from slmkit.errors import ConfigError

M = TypeVar("M", bound=BaseModel)
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")  # what an `*_env` setting may name
HTTP_URL = re.compile(r"^https?://[^/\s]+")


def env_name(value: str | None, field: str, example: str) -> str | None:
    """A settings validator's check of an `*_env` field: None, or an environment variable name."""
    if value is not None and not ENV_NAME.match(value):
        raise ValueError(f"{field} must be an environment variable name, e.g. {example}")
    return value


def http_url(value: str) -> str:
    """A settings validator's check of a URL field: http(s) and a host."""
    if not HTTP_URL.match(value):
        raise ValueError("url must start with http:// or https:// and name a host")
    return value


class StrictModel(BaseModel):
    """Base of every config model: unknown keys are errors, values validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=3` -> (["a", "b"], 3); the value is parsed as YAML so numbers, bools and lists work."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value (e.g. --set train.lr=2e-4)")
    key, _, raw = text.partition("=")
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"--set {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return parts, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        parts, value = parse_override(text)
        node = data
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[parts[-1]] = value
    return data


def _line_index(node: yaml.Node, prefix: tuple[Any, ...], out: dict[tuple[Any, ...], int]) -> None:
    """Map each key path in a YAML document to its 1-based line number."""
    out[prefix] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            path = (*prefix, key_node.value)
            _line_index(value_node, path, out)
            out[path] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _line_index(item, (*prefix, i), out)


def read_yaml(path: Path) -> tuple[dict[str, Any], dict[tuple[Any, ...], int]]:
    """Read a YAML mapping and the line of every key; errors name the file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: file not found") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{where}: invalid YAML: {problem}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}:1: expected a mapping of settings at the top level, got {type(data).__name__}"
        )
    lines: dict[tuple[Any, ...], int] = {}
    if node is not None:
        _line_index(node, (), lines)
    return data, lines


def dotted(loc: tuple[Any, ...]) -> str:
    """A pydantic error location as a dotted key (`train.lr`, `models.0.ref`)."""
    return ".".join(str(p) for p in loc) or "(top level)"


def format_validation_error(
    exc: ValidationError,
    source: str | None = None,
    lines: dict[tuple[Any, ...], int] | None = None,
    *,
    name: Callable[[tuple[Any, ...]], str] = dotted,
) -> str:
    """First pydantic error as `source:line: field: message` (plus how many more there are).

    The one formatter of pydantic errors for users: YAML files give `source` and the key->line
    index of `read_yaml`; command-line values give no source and a `name` that turns the error
    location into the option the user typed (`--max-kld`, `--set serve.port`).
    """
    errors = exc.errors()
    first = errors[0]
    loc = tuple(first["loc"])
    line = None
    for cut in range(len(loc), -1, -1):  # nearest enclosing key that has a line
        if loc[:cut] in (lines or {}):
            line = (lines or {})[loc[:cut]]
            break
    msg = str(first["msg"]).removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown key (check the spelling; `--print-config` lists every key)"
    where = f"{source}:{line}: " if source and line else f"{source}: " if source else ""
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return f"{where}{name(loc)}: {msg}{more}"


def load_config(path: Path | str, cls: type[M], overrides: list[str] | None = None) -> M:
    """Load YAML `path` into `cls`, applying `--set` overrides; errors name file:line and field."""
    path = Path(path)
    data, lines = read_yaml(path)
    data = apply_overrides(data, overrides or [])
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, str(path), lines)) from exc


def dump_config(model: BaseModel) -> str:
    """The fully resolved config as YAML (what `--print-config` shows)."""
    return yaml.safe_dump(model.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def field_default(model: type[BaseModel], name: str) -> Any:
    """The default of `model.name` (a `default_factory` is called; `...` when required)."""
    info = model.model_fields[name]
    return ... if info.is_required() else info.get_default(call_default_factory=True)


def describe(model: type[BaseModel], name: str) -> str:
    """The field's description: the `--help` text of the option or argument that sets it."""
    return model.model_fields[name].description or ""


def _as_cli_text(value: Any) -> Any:
    """A field default as the command line spells it: a list of strings becomes `a,b,c`."""
    if isinstance(value, (list, tuple, dict)) and not value:
        return None  # an empty collection is "not given" on the command line
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return ",".join(value)
    return value


def option(
    model: type[BaseModel],
    name: str,
    *param_decls: str,
    from_config: bool = False,
    extra_help: str = "",
    **kwargs: Any,
) -> Any:
    """A typer option described once: help is the field's description, default the field's default.

    `from_config=True` is for options that a config file may also set: the option itself defaults
    to None (so the file's value stands unless the flag is given) and `--help` shows the field's
    default. `extra_help` adds what only the command line needs (e.g. "comma-separated").
    """
    import typer

    help_text = " ".join(part for part in (describe(model, name), extra_help) if part)
    default = _as_cli_text(field_default(model, name))
    if from_config:
        shown = False if default in (None, ..., "", [], {}) else str(default)
        return typer.Option(None, *param_decls, help=help_text, show_default=shown, **kwargs)
    return typer.Option(default, *param_decls, help=help_text, **kwargs)


def option_flag(loc: tuple[Any, ...], flags: dict[str, str] | None = None) -> str:
    """The CLI option a config field comes from: `max_kld` -> `--max-kld`, or as `flags` maps it.

    The innermost field name counts: `("thresholds", "max_kld")` is `--max-kld`, `("files", 0)` is FILES.
    """
    field = next((p for p in reversed(loc) if isinstance(p, str)), None)
    if field is None:
        return "value"
    return (flags or {}).get(field) or f"--{field.replace('_', '-')}"


def from_options(cls: type[M], values: dict[str, Any], flags: dict[str, str] | None = None) -> M:
    """`cls` from command-line values; a bad value is one ConfigError line naming the option."""
    try:
        return cls.model_validate(values)
    except ValidationError as exc:
        name = partial(option_flag, flags=flags)
        raise ConfigError(format_validation_error(exc, name=name)) from exc


def reference_markdown(model: type[BaseModel], prefix: str = "") -> str:
    """A config's reference table (key, default, description) from its fields, nested sections
    as `section.key`: docs/train.md's recipe table and docs/serve.md's `serve.yaml` table."""
    from slmkit.tools import default_threads

    lines = ["| key | default | description |", "|---|---|---|"]

    def walk(section: type[BaseModel], prefix: str) -> None:
        for name, info in section.model_fields.items():
            annotation = info.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                lines.append(f"| **`{prefix}{name}:`** | | {info.description} |")
                walk(annotation, f"{prefix}{name}.")
                continue
            if info.default_factory is default_threads:  # depends on the machine: no fixed value
                lines.append(f"| `{prefix}{name}` | *(see description)* | {info.description} |")
                continue
            default = info.get_default(call_default_factory=True)
            shown = "" if default is None else f"`{default}`"
            lines.append(f"| `{prefix}{name}` | {shown} | {info.description} |")

    walk(model, prefix)
    return "\n".join(lines)


def env_secret(
    variable: str | None, where: str, *, hint: str = "export it first", required: bool = True
) -> str | None:
    """The secret in environment `variable`, stripped: the one reader of API keys and tokens.

    None when no variable is named, or when it is unset and not `required`; a required one that
    is unset or empty is a ConfigError naming the setting (`where`) and the variable.
    """
    if variable is None:
        return None
    value = os.environ.get(variable, "").strip()
    if not value and required:
        raise ConfigError(f"{where}: environment variable {variable} is not set; {hint}")
    return value or None
