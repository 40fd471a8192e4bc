"""Command-line options built from the config dataclasses, so each default and help text is written once.

A setting a command exposes is a dataclass field made with `option(...)`,
which keeps its help text (and choices) in the field's metadata, as timm
builds its argparse from config. `add_options` turns those fields into
`--flags` whose defaults come from the dataclass and whose help ends with
"(default X)". The Python functions take the same defaults from the same
fields (`defaults_of`), so the command line, the signature and the config
cannot disagree.

Example:
    @dataclass
    class Config:
        lr: float = option(0.1, "learning rate")

    parser = argparse.ArgumentParser()
    add_options(parser, Config)          # --lr, default 0.1, help "learning rate (default 0.1)"
"""

import dataclasses
import typing

# A comma-separated list option arrives as text; these fields' values are cast by the command.
LIST_NOTE = "comma-separated list"


def option(default, help, *, choices=None, const=None, shown=None, metavar=None):
    """A dataclass field that is also a command-line option.

    Args:
        default: the one default of the setting (a list or dict is copied per instance).
        help: what the option does, without its default (added from `default`).
        choices: the values argparse accepts. Defaults to None (any).
        const: for a string setting switched on by a bare flag: the value the
            flag sets (e.g. `--sample-weights` sets "balanced"). Defaults to None.
        shown: the default to print when `default` means "not set" (e.g.
            "bilstm" for a caption branch that is off unless asked for).
        metavar: the value's name in the usage line. Defaults to argparse's.
    """
    metadata = {"help": help, "choices": choices, "const": const, "shown": shown, "metavar": metavar}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def default_of(field):
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None


def defaults_of(config_class):
    """{field name: default} of a config dataclass (what a function's keyword defaults read)."""
    return {field.name: default_of(field) for field in dataclasses.fields(config_class)}


def option_fields(config_class, names=None):
    """The fields of `config_class` that are options (made with `option`), optionally only `names`."""
    chosen = [field for field in dataclasses.fields(config_class) if "help" in field.metadata]
    if names is not None:
        known = {field.name: field for field in chosen}
        missing = [name for name in names if name not in known]
        if missing:
            raise ValueError(f"{config_class.__name__} has no option(s) {', '.join(missing)}")
        chosen = [known[name] for name in names]
    return chosen


def shown_default(field):
    value = field.metadata.get("shown")
    if value is None:
        value = default_of(field)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value).replace("%", "%%")


def argument_type(hint):
    """int, float or str for a field's type hint, `X | None` read as X; anything else is str."""
    present = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    if len(present) == 1:
        hint = present[0]
    return hint if hint in (int, float, str) else str


def add_options(parser, config_class, names=None, *, lists=(), exclude=()):
    """Adds `--<name>` for each option field of `config_class` (all, or `names` in that order).

    Args:
        parser: an argparse parser or argument group.
        config_class: the dataclass whose fields are options.
        names: which fields, in order. Defaults to every option field.
        lists: fields given as comma-separated lists (tune-top's grid axes).
            They parse as text with no default (None), so the command passes
            on only what the user set and the function's default applies.
        exclude: fields to leave out.
    """
    types = typing.get_type_hints(config_class)
    for field in option_fields(config_class, names):
        if field.name in exclude:
            continue
        meta = field.metadata
        flag = "--" + field.name.replace("_", "-")
        text = meta["help"].replace("%", "%%")
        default = default_of(field)
        if meta["const"] is not None:
            parser.add_argument(flag, action="store_const", const=meta["const"], default=default, help=text)
        elif isinstance(default, bool):
            if default:
                raise ValueError(f"{config_class.__name__}.{field.name}: a switch must default to False")
            parser.add_argument(flag, action="store_true", help=text)
        elif field.name in lists:
            parser.add_argument(flag, default=None, help=f"{text} ({LIST_NOTE}; default {shown_default(field)})")
        else:
            kind = argument_type(types.get(field.name))
            parser.add_argument(flag, type=kind, default=default, choices=meta["choices"], metavar=meta["metavar"],
                                help=f"{text} (default {shown_default(field)})")
    return parser


def given(args, names):
    """{name: value} of the parsed `names` the user set (a list option left out is None)."""
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
