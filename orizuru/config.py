"""Typed configs: dataclasses loaded from TOML, overridden with `--set key=value`, validated; and
every command's options, built from its config dataclass.

Every stage (pretrain, sft, dpo, ...) declares its config as nested dataclasses; Python callers use
`load_config(ConfigClass, path, overrides)`, each command's `main` `parse_command(ConfigClass, argv,
prog)`. Unknown keys, wrong types and impossible combinations fail here, naming the key, before any
work starts.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import io
import json
import textwrap
import tokenize
import tomllib
import types
import typing
from dataclasses import field
from pathlib import Path
from typing import Any, Callable, Literal, NoReturn, TypeVar

import tomli_w

from orizuru.errors import UserError
from orizuru.files import atomic_write
from orizuru.resources import shipped_config

T = TypeVar("T")


class ConfigError(UserError):
    pass


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`; return it (ints widen to float)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                pass
        raise ConfigError(f"config key '{key}': expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in typing.get_args(tp):
            choices = ", ".join(repr(a) for a in typing.get_args(tp))
            raise ConfigError(f"config key '{key}': expected one of {choices}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}': expected a list, got {value!r}")
        (item_tp,) = typing.get_args(tp) or (Any,)
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a table, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):  # a section already built (a command's stage config)
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a table, got {value!r}")
        return from_dict(tp, value, prefix=f"{key}.")
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{key}': expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{key}': expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{key}': expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key '{key}': expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config annotation {tp!r} for '{key}'")


def from_dict(cls: type[T], data: dict, prefix: str = "") -> T:
    """Build dataclass `cls` from a (nested) dict, rejecting unknown keys and bad types."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in hints:
            raise ConfigError(
                f"unknown config key '{prefix}{key}' (known keys here: {', '.join(names)})"
            )
        kwargs[key] = _coerce(value, hints[key], f"{prefix}{key}")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except TypeError as e:  # a required field without a default
        raise ConfigError(f"config section '{prefix.rstrip('.') or cls.__name__}': {e}") from None


def to_dict(obj: Any) -> dict:
    """Dataclass -> plain dict, dropping None (TOML has no null)."""

    def clean(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items() if x is not None}
        if isinstance(v, list):
            return [clean(x) for x in v]
        return v

    return clean(dataclasses.asdict(obj))


def _split_override(item: str) -> tuple[list[str], str]:
    if "=" not in item:
        raise ConfigError(f"--set expects key=value, got {item!r}")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set expects key=value, got {item!r}")
    return key.split("."), raw


def apply_overrides(data: dict, overrides: list[str], cls: type | None = None) -> dict:
    """`--set` items into `data`; with `cls`, a value that is TOML of the wrong type for a text key
    (`run.dir=2024`) stays text."""
    for item in overrides:
        path, raw = _split_override(item)
        _assign(data, path, _value(raw, _type_at(cls, path) if cls else None))
    return data


def _assign(data: dict, path: list[str] | tuple[str, ...], value: Any) -> None:
    node = data
    for part in path[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"config key '{'.'.join(path)}': '{part}' is not a section")
    node[path[-1]] = value


def read_toml(path: str | Path) -> dict:
    """A TOML file; a name that is not a file but a shipped config (`sft.toml`, `configs/sft.toml`) reads that."""
    path = Path(path)
    if not path.is_file() and (shipped := shipped_config(path)) is not None:
        path = shipped
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] = (), base: dict | None = None) -> T:
    """File (or `base` dict) + overrides -> validated dataclass. Calls `.validate()` if defined."""
    data = dict(base or {})
    if path is not None:
        data = read_toml(path)
    data = apply_overrides(data, list(overrides), cls)
    cfg = from_dict(cls, data)
    validate(cfg)
    return cfg


def validate(cfg: Any) -> None:
    """Run `validate()` on a dataclass and on every nested dataclass inside it."""
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if dataclasses.is_dataclass(v):
            validate(v)
    if hasattr(cfg, "validate"):
        cfg.validate()


def save_config(cfg: Any, path: str | Path) -> None:
    with atomic_write(path, "wb", encoding=None) as f:
        tomli_w.dump(to_dict(cfg), f)


# ---------------------------------------------------------------- the command line, from the dataclass
#
# As litgpt and torchtitan do: `parse_command(Cls, argv, prog)` gives a command `--config FILE`,
# repeatable `--set key=value`, and one flag per leaf field of `Cls` (`--key`, `--section.key`, with
# `-` or `_`), its help the field's `# comment`. A flag is a `--set`: its text parses as TOML (else
# stays text) and `from_dict` validates it, so a bad value reads the same from a file, a --set or a flag.


def positional(**kwargs: Any) -> Any:
    """A field given as positional arguments (`orizuru scaling fit RUN_DIRS...`) instead of a flag."""
    return field(metadata={"positional": True}, **kwargs)


def stage_config(factory: Callable[[], Any], default_file: str | None = None) -> Any:
    """A command's stage config, the part its TOML files hold (`orizuru corpus build`'s CorpusConfig):
    `--config FILE` and `--set` fill this field, its flags are named as its own keys (`--lang.keep`),
    and the command's other fields (`--input`, `--workers`) are flags only."""
    return field(default_factory=factory, metadata={"stage_config": True, "default_file": default_file})


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are `ConfigError`s: one line, exit 2 through `orizuru.cli`."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{message} (see '{self.prog} --help')")


def _doc(cls: type) -> str:
    doc = cls.__doc__ or ""
    return "" if doc.startswith(f"{cls.__name__}(") else inspect.cleandoc(doc)  # not dataclass's signature


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Each field's help: its trailing `# comment`, else the string just below it; a field with neither
    keeps its base class's. Read from the source (an installed wheel has its .py files too)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__[:-1]):
        docs.update(_own_field_docs(klass))
    return docs


def _own_field_docs(klass: type) -> dict[str, str]:
    try:
        source = textwrap.dedent(inspect.getsource(klass))
        tokens = tokenize.generate_tokens(io.StringIO(source).readline)
        comments = {t.start[0]: t.string.lstrip("#").strip() for t in tokens if t.type == tokenize.COMMENT}
        body = ast.parse(source).body[0].body
    except (OSError, TypeError, SyntaxError, tokenize.TokenError, AttributeError, IndexError):
        return {}
    docs = {}
    for stmt, after in zip(body, [*body[1:], None]):
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            continue
        text = comments.get(stmt.end_lineno) or comments.get(stmt.lineno)
        if not text and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str):
            text = inspect.cleandoc(after.value.value)
        if text:
            docs[stmt.target.id] = text
    return docs


def _stage_field(cls: type) -> dataclasses.Field | None:
    return next((f for f in dataclasses.fields(cls) if f.metadata.get("stage_config")), None)


def _default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _flag(parts: tuple[str, ...]) -> str:
    return "--" + ".".join(p.replace("_", "-") for p in parts)


def _list_item(tp: Any) -> Any:
    """The item type when `tp` is a list (or an optional list), else None."""
    for t in (tp, *typing.get_args(tp)):
        if typing.get_origin(t) is list:
            return (typing.get_args(t) or (Any,))[0]
    return None


def _fits(value: Any, tp: Any) -> bool:
    try:
        _coerce(value, tp, "")
    except (ConfigError, TypeError):
        return False
    return True


def _value(raw: str, tp: Any) -> Any:
    """Command-line text as a config value: TOML if it parses (and fits a known key's type), else the
    text itself, so `--output 2024` or `--prompt true` stay text where text is wanted."""
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw
    return raw if tp is not None and not _fits(value, tp) and _fits(raw, tp) else value


def _type_at(cls: type, path: list[str] | tuple[str, ...]) -> Any:
    """The annotation of key `path` under dataclass `cls`; None for an unknown key."""
    tp: Any = cls
    for part in path:
        if not dataclasses.is_dataclass(tp):
            return None
        tp = typing.get_type_hints(tp).get(part)
    return tp


def _show(value: Any) -> str:
    """A default as --help shows it: text as is, anything else as TOML on one line."""
    return str(value) if isinstance(value, str) or value is None else _toml(value)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(map(_toml, value)) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    return repr(value)


class _Record(argparse.Action):
    """Keeps every config value of the command line, in order, as (key path, value, is_list) in `_items`."""

    def __init__(self, option_strings, dest, key=(), tp=None, root=(), stage=None, **kwargs):
        super().__init__(option_strings, dest, **kwargs)
        self.key, self.tp, self.root, self.stage = key, tp, root, stage

    def __call__(self, parser, namespace, values, option_string=None):
        if getattr(namespace, "_items", None) is None:
            namespace._items = []
        item_tp = _list_item(self.tp)
        if option_string is None and not values:  # an optional positional left out
            return
        if option_string == "--set":
            path, raw = _split_override(values)
            item = ((*self.root, *path), _value(raw, _type_at(self.stage, path)), False)
        elif self.nargs == 0:  # --flag / --no-flag
            item = (self.key, not option_string.startswith("--no-"), False)
        elif item_tp is not None:  # one TOML array, or one item per word
            whole = _value(values[0], self.tp) if len(values) == 1 else None
            item = (self.key, whole if isinstance(whole, list) else [_value(v, item_tp) for v in values], True)
        else:
            item = (self.key, _value(values, self.tp), False)
        namespace._items.append(item)


def command_parser(cls: type, prog: str | None = None, description: str | None = None, *,
                   aliases: dict[str, str] | None = None, parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The argparse parser of command dataclass `cls`: --config, --set, one flag per leaf field, and
    `aliases`, extra flags for a key (`{"init-from": "train.init_from"}`)."""
    parser = parser or _Parser(prog=prog, description=description, allow_abbrev=False)
    stage = _stage_field(cls)
    root = (stage.name,) if stage else ()
    stage_cls = typing.get_type_hints(cls)[stage.name] if stage else cls
    default_file = stage.metadata["default_file"] if stage else None
    parser.add_argument(
        "--config", metavar="FILE", dest="_config", default=default_file,
        help=f"TOML file of {'the ' + stage.name if stage else 'this'} config (a shipped one by name, e.g. configs/"
        f"{default_file or 'NAME.toml'}); --set and flags override it" + (f" (default: {default_file})" if default_file else ""),
    )
    set_ = parser.add_argument("--set", metavar="KEY=VALUE", action=_Record, dest="_items", root=root, stage=stage_cls)
    flags: dict[tuple[str, ...], tuple[str, Any]] = {}
    positionals: list[str] = []
    examples: list[tuple[tuple[str, ...], Any]] = []  # (key, default) of the optional leaves, for --set's help

    def add(klass: type, path: tuple[str, ...], shown: tuple[str, ...], defaults: Any, group) -> None:
        hints, docs = typing.get_type_hints(klass), field_docs(klass)
        for f in dataclasses.fields(klass):
            tp, key = hints[f.name], (*path, f.name)
            default = _default_of(f) if defaults is None else getattr(defaults, f.name)
            if f.metadata.get("stage_config"):
                if default_file:
                    default = from_dict(tp, read_toml(default_file))
                add(tp, key, shown, default, parser.add_argument_group(f"{f.name} config", _doc(tp).split("\n\n")[0] or None))
            elif dataclasses.is_dataclass(tp):
                sub = (*shown, f.name)
                add(tp, key, sub, default, parser.add_argument_group(f"[{'.'.join(sub)}]", _doc(tp).split("\n\n")[0] or None))
            else:
                flags[key] = (_flag((*shown, f.name)), tp)
                required, positional = default is dataclasses.MISSING, f.metadata.get("positional", False)
                help_ = docs.get(f.name, "") + ("" if positional else " (required)" if required else f" (default: {_show(default)})")
                _add_flag(group, (*shown, f.name), key, tp, help_, required, positional)
                if not required:
                    examples.append((key, default))
                if positional:
                    positionals.append(f.name.upper() + ("..." if _list_item(tp) is not None else ""))

    add(cls, (), (), None, parser)
    for name, target in (aliases or {}).items():
        flag, tp = flags[(*root, *target.split("."))]
        _add_flag(parser, (name,), (*root, *target.split(".")), tp, f"same as {flag}", False, False)
    example = next((f"{'.'.join(k[len(root):])}={_show(d)}" for k, d in examples if d is not None and k[:len(root)] == root), "KEY=VALUE")
    set_.help = f"set a config key (the value parses as TOML, else is text), e.g. {example}; repeatable".replace("%", "%%")
    parser.usage = " ".join(["%(prog)s [--config FILE] [--set KEY=VALUE] [--KEY VALUE ...]", *positionals])
    return parser


def _add_flag(group, shown: tuple[str, ...], key: tuple[str, ...], tp: Any, help_: str, required: bool, positional: bool) -> None:
    choices = typing.get_args(tp) if typing.get_origin(tp) is Literal else None
    metavar = "{" + ",".join(map(str, choices)) + "}" if choices else shown[-1].replace("-", "_").upper()
    kwargs: dict[str, Any] = dict(action=_Record, key=key, tp=tp, help=help_.strip().replace("%", "%%"), metavar=metavar)
    is_list = _list_item(tp) is not None
    if positional:
        nargs = ("+" if required else "*") if is_list else (None if required else "?")
        group.add_argument(shown[-1], nargs=nargs, **kwargs)
    elif tp is bool:
        flag = _flag(shown)
        group.add_argument(flag, "--no-" + flag[2:], nargs=0, dest="_items", **{**kwargs, "metavar": None})
    else:
        group.add_argument(_flag(shown), nargs=("+" if required else "*") if is_list else None, dest="_items", **kwargs)


def _normalise(argv: list[str]) -> list[str]:
    """`--max_new_tokens` -> `--max-new-tokens`: a flag may be spelled with `_` or `-`."""
    out = list(argv)
    for i, arg in enumerate(out):
        if arg == "--":
            break
        if arg.startswith("--"):
            name, eq, rest = arg.partition("=")
            out[i] = name.replace("_", "-") + eq + rest
    return out


def _build(cls: type[T], namespace: argparse.Namespace) -> T:
    """The parsed command line -> validated `cls`: defaults < --config FILE < --set and flags, in order."""
    stage = _stage_field(cls)
    data: dict = {}
    if namespace._config is not None:
        if stage:
            data[stage.name] = read_toml(namespace._config)
        else:
            data = read_toml(namespace._config)
    listed: set[tuple[str, ...]] = set()
    for key, value, is_list in getattr(namespace, "_items", None) or []:
        if is_list and key in listed:  # a repeated list flag adds to its list (--prompt A --prompt B)
            value = _get(data, key) + value
        _assign(data, key, value)
        if is_list:
            listed.add(key)
    if stage:
        stage_cls = typing.get_type_hints(cls)[stage.name]
        section = data.pop(stage.name, {})
        _check_required(stage_cls, section, ())
        data[stage.name] = from_dict(stage_cls, section)
    _check_required(cls, data, ())
    cfg = from_dict(cls, data)
    validate(cfg)
    return cfg


def _get(data: dict, key: tuple[str, ...]) -> Any:
    node: Any = data
    for part in key:
        node = node[part]
    return node


def _check_required(cls: type, data: dict, shown: tuple[str, ...]) -> None:
    """A field without a default that nothing gave: one line naming its flag."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("stage_config"):
            continue
        key = (*shown, f.name)
        if f.name not in data and _default_of(f) is dataclasses.MISSING:
            name = f.name.upper() if f.metadata.get("positional") else _flag(key)
            raise ConfigError(f"{name} is required (config key '{'.'.join(key)}')")
        if dataclasses.is_dataclass(hints[f.name]) and isinstance(data.get(f.name), dict):
            _check_required(hints[f.name], data[f.name], key)


def parse_command(cls: type[T], argv: list[str], prog: str, description: str | None = None, *,
                  aliases: dict[str, str] | None = None) -> T:
    """argv -> validated `cls`: its defaults < --config FILE < --set and flags (in command-line order)."""
    parser = command_parser(cls, prog, description, aliases=aliases)
    return _build(cls, parser.parse_args(_normalise(argv)))


def parse_subcommand(commands: dict[str, type], argv: list[str], prog: str, description: str | None = None) -> tuple[str, Any]:
    """`prog NAME ...` -> (NAME, its validated dataclass); a class's docstring is its subcommand's help."""
    parser = _Parser(prog=prog, description=description, allow_abbrev=False)
    sub = parser.add_subparsers(dest="_command", required=True, metavar="COMMAND")
    for name, cls in commands.items():
        doc = _doc(cls)
        command_parser(cls, parser=sub.add_parser(name, help=doc.split("\n")[0], description=doc.split("\n\n")[0] or None,
                                                  allow_abbrev=False))
    namespace = parser.parse_args(_normalise(argv))
    return namespace._command, _build(commands[namespace._command], namespace)
