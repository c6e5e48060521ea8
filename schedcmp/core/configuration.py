"""Config system in the diffusers style: the ``__init__`` signature is the schema.

``@register_to_config`` records every argument of a decorated ``__init__`` (explicit or default) in a read-only
``config``; ``from_config`` rebuilds an object from such a mapping with diffusers' exact semantics, and
``save_config`` / ``load_config`` read and write the same ``*_config.json`` files diffusers does.
"""

from __future__ import annotations

import functools
import inspect
import json
import types
import typing
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

from .errors import ConfigError, ConfigWarning

# The diffusers release whose file format we read and write; saved as ``_diffusers_version``.
DIFFUSERS_FORMAT_VERSION = "0.42.1"

# Private keys that live in memory only and are never written to a config file.
_UNSAVED_KEYS = ("_use_default_values", "_ignore_files")

T = TypeVar("T", bound="ConfigMixin")


def _freeze(value: Any) -> Any:
    """Turn lists (e.g. ``trained_betas``) into tuples so no nested value can be changed in place."""
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


def to_jsonable(value: Any) -> Any:
    """Turn a config value into plain JSON data (tuples and arrays become lists, paths become strings)."""
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, Path):
        return value.as_posix()
    if hasattr(value, "tolist"):  # numpy arrays and tensors
        return value.tolist()
    return value


class FrozenConfig(dict):
    """A read-only mapping with attribute access (``config.num_train_timesteps``).

    It is a ``dict`` so that code written for diffusers' ``FrozenDict`` accepts it, but every mutating method
    raises: change a configuration with ``Class.from_config(config, key=value)`` instead.
    """

    def __init__(self, items: Mapping[str, Any] | Iterable[tuple[str, Any]] = ()):
        super().__init__((k, _freeze(v)) for k, v in dict(items).items())

    def _refuse(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError(
            "a scheduler config is read-only; build a new scheduler with "
            "SchedulerClass.from_config(config, key=value) to change a value"
        )

    __setitem__ = __delitem__ = __ior__ = _refuse
    clear = pop = popitem = setdefault = update = _refuse
    __setattr__ = __delattr__ = _refuse

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"config has no key {name!r}") from None

    def __reduce__(self) -> tuple:
        return (type(self), (dict(self),))

    def __copy__(self) -> FrozenConfig:
        return self

    def __deepcopy__(self, memo: dict) -> FrozenConfig:
        return self


_EMPTY_CONFIG = FrozenConfig()


def init_keys(cls: type) -> set[str]:
    """The configurable keys of a class: the parameters of its ``__init__`` besides ``self`` and ``**kwargs``."""
    params = inspect.signature(cls.__init__).parameters
    return {
        name
        for name, p in params.items()
        if name != "self" and p.kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
    }


def literal_choices(annotation: Any) -> tuple[tuple[Any, ...], bool] | None:
    """The allowed values of a ``Literal[...]`` (or ``Literal[...] | None``) annotation, and whether None is allowed."""
    if typing.get_origin(annotation) is Literal:
        return typing.get_args(annotation), False
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        literals = [a for a in args if typing.get_origin(a) is Literal]
        if len(literals) == 1 and all(a is type(None) or a is literals[0] for a in args):
            return typing.get_args(literals[0]), type(None) in args
    return None


def check_choices(owner: str, init: Callable, values: Mapping[str, Any]) -> None:
    """Reject a value outside its parameter's ``Literal`` choices with a message listing the allowed ones."""
    for name, annotation in typing.get_type_hints(init).items():
        choices = literal_choices(annotation)
        if choices is None or name not in values:
            continue
        allowed, none_ok = choices
        value = values[name]
        if (value is None and none_ok) or any(value == c and type(value) is type(c) for c in allowed):
            continue
        listed = ", ".join(repr(c) for c in allowed) + (", None" if none_ok else "")
        raise ConfigError(f"{owner}: {name} must be one of {listed}; got {value!r}")


def register_to_config(init: Callable) -> Callable:
    """Decorate an ``__init__`` so every argument, given or defaulted, is recorded in ``self.config``.

    Keyword arguments starting with ``_`` are config metadata (``_class_name``...): recorded, not passed on.
    The names of arguments left at their defaults are kept in ``_use_default_values`` so that ``from_config``
    can let another class apply its own defaults for them.
    """
    signature = inspect.signature(init)
    defaults = {
        name: p.default
        for name, p in list(signature.parameters.items())[1:]
        if p.kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
    }

    @functools.wraps(init)
    def wrapped_init(self: ConfigMixin, *args: Any, **kwargs: Any) -> None:
        metadata = {k: v for k, v in kwargs.items() if k.startswith("_")}
        given = {k: v for k, v in kwargs.items() if not k.startswith("_")}
        given.update(zip(defaults, args, strict=False))  # positional arguments
        values = {name: given.get(name, default) for name, default in defaults.items()}
        check_choices(type(self).__name__, init, values)
        defaulted = sorted(set(defaults) - set(given))
        if defaulted:
            values["_use_default_values"] = defaulted
        self.register_to_config(**metadata, **values)
        init(self, *args, **{k: v for k, v in kwargs.items() if not k.startswith("_")})

    return wrapped_init


class ConfigMixin:
    """Stores constructor arguments in a read-only ``config`` and rebuilds objects from it (diffusers' contract)."""

    config_name = "config.json"

    @property
    def config(self) -> FrozenConfig:
        """The read-only configuration this object was built from."""
        return self.__dict__.get("_internal_dict", _EMPTY_CONFIG)

    def register_to_config(self, **kwargs: Any) -> None:
        """Add (or replace) keys of the config; the result is a new frozen mapping."""
        self._internal_dict = FrozenConfig({**self.config, **kwargs})

    @classmethod
    def compatible_classes(cls) -> list[type]:
        """Classes whose configs this class may be built from; their private keys are dropped silently."""
        return [cls]

    @classmethod
    def from_config(
        cls: type[T], config: Mapping[str, Any] | None = None, return_unused_kwargs: bool = False, **kwargs: Any
    ) -> T | tuple[T, dict[str, Any]]:
        """Build an instance from a config mapping (ours or diffusers'), ``kwargs`` overriding its values.

        Keys that were only defaults in the source fall back to this class's defaults; keys this class does not
        take are kept as hidden config entries so a round trip back to the source class loses nothing.
        """
        if config is None:
            raise ConfigError(f"{cls.__name__}.from_config needs a config mapping as its first argument")
        if not isinstance(config, Mapping):
            raise ConfigError(
                f"{cls.__name__}.from_config takes a config mapping, not {type(config).__name__}; "
                f"to read a folder use {cls.__name__}.from_pretrained(path)"
            )
        init_kwargs, unused, hidden = cls.extract_init_dict(dict(config), **kwargs)
        instance = cls(**init_kwargs)
        if "_class_name" in hidden:
            hidden["_class_name"] = cls.__name__
        instance.register_to_config(**hidden)
        if return_unused_kwargs:
            return instance, {**unused, **hidden}
        return instance

    @classmethod
    def extract_init_dict(
        cls, config: dict[str, Any], **overrides: Any
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        """Split a config into (``__init__`` arguments, unused keys, hidden keys), following diffusers."""
        defaulted_in_source = set(config.get("_use_default_values", ()))
        config = {k: v for k, v in config.items() if k not in defaulted_in_source and k != "_use_default_values"}
        original = dict(config)
        expected = init_keys(cls)

        # Keys that belong to a compatible sibling class (not to us) are expected to be left over: drop quietly.
        sibling_keys = set().union(*(init_keys(c) for c in cls.compatible_classes())) - expected
        source_name = config.get("_class_name", cls.__name__)
        if not isinstance(source_name, str):
            raise ConfigError(f"`_class_name` must be a string, got {source_name!r}")
        candidates = {
            k: v
            for k, v in config.items()
            if k not in sibling_keys and not k.startswith("_") and k != "quantization_config"
        }

        init_kwargs: dict[str, Any] = {}
        overrides = dict(overrides)
        for key in expected:
            if key in overrides:
                init_kwargs[key] = overrides.pop(key)
                candidates.pop(key, None)
            elif key in candidates:
                init_kwargs[key] = candidates.pop(key)

        if candidates:
            warnings.warn(
                f"{cls.__name__} does not take the config keys {sorted(candidates)}; they are kept in the config "
                "but have no effect",
                ConfigWarning,
                stacklevel=3,
            )
        unused = {**candidates, **overrides}
        hidden = {k: v for k, v in original.items() if k not in init_kwargs}
        return init_kwargs, unused, hidden

    @classmethod
    def load_config(cls, path: str | Path, subfolder: str | None = None) -> dict[str, Any]:
        """Read ``<path>[/<subfolder>]/<config_name>`` (or the JSON file ``path`` itself) into a dict."""
        path = Path(path)
        if subfolder:
            path = path / subfolder
        file = path / cls.config_name if path.is_dir() else path
        if not file.is_file():
            where = f"{path} has no {cls.config_name}" if path.is_dir() else f"{path} does not exist"
            raise ConfigError(f"cannot load {cls.__name__} config: {where}")
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ConfigError(f"{file}:{err.lineno}: not valid JSON ({err.msg})") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{file}: not a UTF-8 text file; expected a JSON config") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{file}: expected a JSON object, found {type(data).__name__}")
        return data

    def to_json_string(self) -> str:
        """The config as diffusers writes it: sorted keys, 2-space indent, class name and format version."""
        data = {k: to_jsonable(v) for k, v in self.config.items() if k not in _UNSAVED_KEYS}
        data["_class_name"] = type(self).__name__
        data["_diffusers_version"] = DIFFUSERS_FORMAT_VERSION
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    def save_config(self, save_directory: str | Path) -> Path:
        """Write ``<save_directory>/<config_name>``, creating the folder; returns the file written."""
        directory = Path(save_directory)
        if directory.is_file():
            raise ConfigError(f"cannot save config: {directory} is a file, expected a folder")
        directory.mkdir(parents=True, exist_ok=True)
        file = directory / self.config_name
        file.write_text(self.to_json_string(), encoding="utf-8")
        return file

    def __repr__(self) -> str:
        return f"{type(self).__name__} {self.to_json_string()}"
