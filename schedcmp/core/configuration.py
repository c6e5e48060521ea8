"""Config system in the diffusers style: the ``__init__`` signature is the schema.

``@register_to_config`` records every argument of a decorated ``__init__`` (explicit or default) in a read-only
``config``; ``from_config`` rebuilds an object from such a mapping with diffusers' exact semantics, and
``save_config`` / ``load_config`` read and write the same ``*_config.json`` files diffusers does.

Values are checked where they enter (``__init__``, ``load_config``, model config dataclasses) against their
annotations: ``Literal`` choices, types, and ``Annotated[..., Range(...)]`` bounds (``PositiveInt``, ``Fraction`` ...).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import math
import numbers
import types
import typing
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import numpy as np
import torch

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


def _thaw(value: Any) -> Any:
    """The lists ``_freeze`` made tuples, as lists again (how diffusers holds and prints them)."""
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
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

    def __repr__(self) -> str:
        """Printed as diffusers prints its ``FrozenDict``: ``FrozenDict([('key', value), ...])``."""
        return f"FrozenDict({[(key, _thaw(value)) for key, value in self.items()]!r})"

    def __copy__(self) -> FrozenConfig:
        return self

    def __deepcopy__(self, memo: dict) -> FrozenConfig:
        return self


FrozenDict = FrozenConfig  # diffusers' name for it, as its repr shows

_EMPTY_CONFIG = FrozenConfig()


@functools.cache
def init_keys(cls: type) -> frozenset[str]:
    """The configurable keys of a class: the parameters of its ``__init__`` besides ``self`` and ``**kwargs``
    (read from the signature once per class; every ``from_config`` asks)."""
    params = inspect.signature(cls.__init__).parameters
    return frozenset(
        name
        for name, p in params.items()
        if name != "self" and p.kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
    )


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


# ---------------------------------------------------------------------------------------------- value checking
#
# A config key's annotation is its schema: ``int``, ``float`` (ints accepted), ``bool``, ``str``, ``Literal[...]``,
# ``X | None``, ``list[X]`` / ``tuple[X, ...]`` / ``Sequence[X]`` (a list or a tuple), ``np.ndarray`` /
# ``torch.Tensor`` (numbers), a class (an instance of it), and ``Annotated[X, Range(...)]`` for bounds. A Range
# bounds a number, or each number of the list or array it annotates. Other annotations are not checked.


@dataclass(frozen=True)
class Range:
    """Bounds on a number (or on each number of a list / array), declared as ``Annotated[int, Range(ge=1)]``.

    ``ge`` / ``le`` are inclusive bounds, ``gt`` / ``lt`` exclusive ones; at most one of each pair.
    """

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def __post_init__(self) -> None:
        if (self.ge is not None and self.gt is not None) or (self.le is not None and self.lt is not None):
            raise TypeError("Range takes at most one lower bound (ge or gt) and one upper bound (le or lt)")

    def contains(self, number: float) -> bool:
        """Whether ``number`` lies within the bounds (NaN never does)."""
        if math.isnan(number):
            return False
        return (
            (self.ge is None or number >= self.ge)
            and (self.gt is None or number > self.gt)
            and (self.le is None or number <= self.le)
            and (self.lt is None or number < self.lt)
        )

    def describe(self) -> str:
        """The bounds in words: ``">= 1"``, ``"between 0 and 1 (exclusive)"``, ``">= 0 and < 1"``."""
        lower = f">= {_number(self.ge)}" if self.ge is not None else ""
        lower = f"> {_number(self.gt)}" if self.gt is not None else lower
        upper = f"<= {_number(self.le)}" if self.le is not None else ""
        upper = f"< {_number(self.lt)}" if self.lt is not None else upper
        if lower and upper and (self.ge is None) == (self.le is None):
            low, high = (self.ge, self.le) if self.ge is not None else (self.gt, self.lt)
            return f"between {_number(low)} and {_number(high)}" + (" (exclusive)" if self.ge is None else "")
        return " and ".join(bound for bound in (lower, upper) if bound)


def _number(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else repr(bound)


# The ranges config keys share; the signature names them (``num_train_timesteps: PositiveInt = 1000``).
PositiveInt = Annotated[int, Range(ge=1)]  # a count: timesteps, channels, layers, solver order
NonNegativeInt = Annotated[int, Range(ge=0)]  # an offset or an index: steps_offset, padding
PositiveFloat = Annotated[float, Range(gt=0)]  # a scale: sigmas, epsilons, clipping ranges
Fraction = Annotated[float, Range(ge=0, le=1)]  # a quantile or a proportion


_SEQUENCE_ORIGINS = (list, tuple, Sequence)
_ARRAY_TYPES = (np.ndarray, torch.Tensor)


def _is_bool(value: Any) -> bool:
    return isinstance(value, (bool, np.bool_))


def _conforms(value: Any, annotation: Any, bounds: Range | None = None) -> bool:
    """Whether ``value`` is allowed by ``annotation`` (and by ``bounds``, a Range from an enclosing Annotated)."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        inner, *metadata = typing.get_args(annotation)
        ranges = [m for m in metadata if isinstance(m, Range)]
        return _conforms(value, inner, ranges[-1] if ranges else bounds)
    if origin in (typing.Union, types.UnionType):
        return any(_conforms(value, option, bounds) for option in typing.get_args(annotation))
    if origin is Literal:
        return any(value == c and type(value) is type(c) for c in typing.get_args(annotation))
    if annotation is type(None) or annotation is None:
        return value is None
    if annotation is bool:
        return _is_bool(value)
    if annotation is int:
        ok = isinstance(value, numbers.Integral) and not _is_bool(value)
        return ok and (bounds is None or bounds.contains(int(value)))
    if annotation is float:
        ok = isinstance(value, numbers.Real) and not _is_bool(value)
        return ok and (bounds is None or bounds.contains(float(value)))
    if annotation is str:
        return isinstance(value, str)
    if origin in _SEQUENCE_ORIGINS:
        if not isinstance(value, (list, tuple)):
            return False
        args = typing.get_args(annotation)
        if origin is not tuple or (len(args) == 2 and args[1] is Ellipsis):
            item = args[0] if args else Any
            return all(_conforms(v, item, bounds) for v in value)
        return len(value) == len(args) and all(_conforms(v, a, bounds) for v, a in zip(value, args, strict=True))
    if annotation in _ARRAY_TYPES:
        if not isinstance(value, annotation):
            return False
        array = np.asarray(value.detach().cpu() if isinstance(value, torch.Tensor) else value)
        if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.number):
            return False
        return bounds is None or all(bounds.contains(float(v)) for v in array.reshape(-1))
    if isinstance(annotation, type) and annotation is not object:
        return isinstance(value, annotation)
    return True  # Any, TypeVars and other annotations are not checked


def _describe(annotation: Any, bounds: Range | None = None, plural: bool = False) -> str:
    """What ``annotation`` allows, in words: ``"a whole number >= 1"``, ``"a list of strings or None"``."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        inner, *metadata = typing.get_args(annotation)
        ranges = [m for m in metadata if isinstance(m, Range)]
        return _describe(inner, ranges[-1] if ranges else bounds, plural)
    if origin in (typing.Union, types.UnionType):
        options = [o for o in typing.get_args(annotation) if o is not type(None)]
        words: list[str] = []
        for word in (_describe(option, bounds, plural) for option in options):
            items = word.removeprefix("an array of ")
            if word.startswith("an array of ") and f"a list of {items}" in words:
                word = f"a list or array of {items}"  # one phrase for a list or an array of the same numbers
                words[words.index(f"a list of {items}")] = word
            elif word not in words and f"a list or array of {items}" not in words:
                words.append(word)
        if len(options) < len(typing.get_args(annotation)):
            words.append("None")
        return " or ".join(words)
    if annotation is type(None) or annotation is None:
        return "None"
    if origin is Literal:
        return "one of " + ", ".join(repr(c) for c in typing.get_args(annotation))
    suffix = f" {bounds.describe()}" if bounds is not None and bounds.describe() else ""
    if annotation is bool:
        return "True or False"
    if annotation is int:
        return ("whole numbers" if plural else "a whole number") + suffix
    if annotation is float:
        return ("numbers" if plural else "a number") + suffix
    if annotation is str:
        return "strings" if plural else "a string"
    if origin in _SEQUENCE_ORIGINS:
        args = [a for a in typing.get_args(annotation) if a is not Ellipsis] or [Any]
        return "a list of " + _describe(args[0], bounds, plural=True)
    if annotation in _ARRAY_TYPES:
        return "an array of numbers" + suffix
    if isinstance(annotation, type):
        return f"{'instances' if plural else 'an instance'} of {annotation.__name__}"
    return "values" if plural else "a value"


@functools.cache
def schema_of(schema: Callable | type) -> dict[str, Any]:
    """The annotations, ``Annotated`` markers kept, of an ``__init__`` or of a (dataclass) class's fields."""
    if not (inspect.isfunction(schema) or inspect.isclass(schema)):
        return {}  # object.__init__ and other built-ins declare no keys
    hints = typing.get_type_hints(schema, include_extras=True)
    hints.pop("return", None)
    return hints


def check_values(owner: str, schema: Callable | type, values: Mapping[str, Any]) -> None:
    """Reject a value its annotation does not allow, naming ``owner``, the key, what is allowed and the value.

    ``schema`` is an ``__init__`` (the signature is the schema) or a config dataclass; keys of ``values`` it does
    not annotate are not checked. ``Literal`` choices are listed as ``must be one of 'a', 'b'``.
    """
    for name, annotation in schema_of(schema).items():
        if name not in values or _conforms(values[name], annotation):
            continue
        choices = literal_choices(annotation)
        if choices is not None:
            allowed = "one of " + ", ".join(repr(c) for c in choices[0]) + (", None" if choices[1] else "")
        else:
            allowed = _describe(annotation)
        raise ConfigError(f"{owner}: {name} must be {allowed}; got {_shown(values[name], annotation)}")


def check_fields(config: Any) -> None:
    """Check every field of a config dataclass instance against its annotation (call it from ``__post_init__``)."""
    values = {name: getattr(config, name) for name in schema_of(type(config)) if hasattr(config, name)}
    check_values(type(config).__name__, type(config), values)


def _shown(value: Any, annotation: Any) -> str:
    """A bad value as the message shows it: the first bad entry of an allowed kind of list or array, else the value
    (cut short: a message is one line)."""
    if isinstance(value, (list, tuple, *_ARRAY_TYPES)) and len(value) > 1:
        entries = value.tolist() if isinstance(value, _ARRAY_TYPES) else value

        def alone(*items: Any) -> Any:  # a container of the value's kind holding only ``items``
            if isinstance(value, torch.Tensor):
                return torch.tensor(items, dtype=value.dtype)
            return np.asarray(items, dtype=value.dtype) if isinstance(value, np.ndarray) else type(value)(items)

        if _conforms(alone(), annotation):  # the kind of container is right: point at the entry that is not
            for index, entry in enumerate(entries):
                if not _conforms(alone(entry), annotation):
                    return f"{entry!r} at index {index}"
        value = entries
    text = repr(value)
    return text if len(text) <= 120 else text[:100] + " ... " + text[-12:]


@contextlib.contextmanager
def config_source(source: str | Path | None) -> Iterator[None]:
    """Within the block, a ConfigError's message starts with ``source:`` (the file a bad value was read from)."""
    if source is None:
        yield
        return
    try:
        yield
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None


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
        check_values(type(self).__name__, init, values)
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
        """Read ``<path>[/<subfolder>]/<config_name>`` (or the JSON file ``path`` itself) into a dict.

        The values are checked against the signature of the class the file names (``_class_name``, when it is
        this class or one of its compatibles; else this class): a bad one is a ConfigError starting with the file.
        """
        path = Path(path)
        if subfolder:
            path = path / subfolder
        file = path / cls.config_name if path.is_dir() else path
        if not file.is_file():
            where = f"{path} has no {cls.config_name}" if path.is_dir() else f"{path} does not exist"
            raise ConfigError(f"cannot load {cls.__name__} config: {where}")
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except OSError as err:
            raise ConfigError(f"cannot read {file}: {err.strerror}") from None
        except json.JSONDecodeError as err:
            raise ConfigError(f"{file}:{err.lineno}: not valid JSON ({err.msg})") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{file}: not a UTF-8 text file; expected a JSON config") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{file}: expected a JSON object, found {type(data).__name__}")
        named = data.get("_class_name")
        owner = next((c for c in cls.compatible_classes() if c.__name__ == named), cls)
        with config_source(file):
            check_values(owner.__name__, owner.__init__, data)
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
