"""Argument errors of ``LightningCLI`` in one sentence: the flag, the value it got and what is allowed.

jsonargparse reports a bad value as a nested dump of Union subtypes after a usage block of fifty lines
(Lightning #19714). ``explain`` rewrites the messages jsonargparse produces into a short one; a
message it does not recognise passes through unchanged.
"""
from __future__ import annotations

import difflib
import importlib
import inspect
import re
from typing import Any

# A well-known subclass to show in "name the class first" (by the base class's name).
_EXAMPLE_SUBCLASS = {"Optimizer": "Adam", "LRScheduler": "StepLR", "Callback": "EarlyStopping", "Logger": "CSVLogger"}
_TYPE_WORDS = {"int": "an int", "float": "a float", "str": "a string", "bool": "true or false", "NoneType": "null",
               "dict": "a mapping", "list": "a list", "Path": "a path"}


def explain(parser: Any, message: str) -> str:
    for pattern, rewrite in _RULES:
        found = re.search(pattern, message, re.S)
        if found:
            return rewrite(parser, found, message)
    return message


def _unknown_flag(parser: Any, found: re.Match, message: str) -> str:
    words = found.group(1).split()
    flag = next((w for w in words if w.startswith("-")), words[0])
    name, value = re.split(r"\+?=", flag, maxsplit=1)[0], None
    if "=" in flag:
        value = flag.split("=", 1)[1]
    elif words.index(flag) + 1 < len(words):
        value = words[words.index(flag) + 1]
    got = f" (with value {value!r})" if value is not None else ""
    if not name.startswith("-"):
        return (f"unexpected argument {name!r}: every value needs a flag before it, like --trainer.max_epochs 3. "
                f"{_help_tip(parser)}")
    return f"{name} is not a flag of this command{got}. {_closest_flag(name, _flags(parser))}{_help_tip(parser)}"


def _unknown_config_key(parser: Any, found: re.Match, message: str) -> str:
    subcommand, key = found.group(1), found.group(2)
    sub = getattr(parser, "subcommand_parsers", {}).get(subcommand, parser)
    return (f"--{key} (a key of the config given to `{subcommand}`) is not a flag of `{subcommand}`. "
            f"{_closest_flag('--' + key, _flags(sub))}{_help_tip(sub)}")


def _bad_subcommand(parser: Any, found: re.Match, message: str) -> str:
    value, choices = found.group(1), re.findall(r"'([^']*)'", found.group(2))
    hint = _closest(value, choices, quote=True)
    return (f"the subcommand got {value!r}; allowed: {', '.join(choices)}. {hint}The subcommand comes first, then "
            f"its flags: fit --trainer.max_epochs 3.")


def _bad_value(parser: Any, found: re.Match, message: str) -> str:
    return _explain_value(f"--{found.group(1)}", message)


def _explain_value(flag: str, message: str) -> str:
    # A class was chosen (--optimizer Adam) and one of its own arguments is wrong: explain that argument.
    nested = re.search(r"Problem with given class_path '([^']+)':\s*", message)
    if nested:
        class_path, inner = nested.group(1), _item_body(message, nested)
        option = re.match(r"Option '([^']+)' is not accepted", inner)
        if option:
            return _bad_init_arg(flag, class_path, option.group(1), message)
        required = re.match(r"the following arguments are required: ([\w., ]+)", inner)
        if required:
            names = [n.strip() for n in required.group(1).split(",")]
            flags = " and ".join(f"{flag}.{n}" for n in names)
            return f"{class_path} needs {flags}; give {' '.join(f'{flag}.{n} VALUE' for n in names)}."
        inner_key = re.match(r'Parser key "([^"]+)":', inner)
        if inner_key:
            return _explain_value(f"{flag}.{inner_key.group(1)}", inner[inner_key.end():])
    missing_file = re.search(r"File does not exist: '([^']+)'", message)
    if missing_file:
        return f"{flag} got a file that does not exist: {missing_file.group(1)}."
    value = _given_value(message)
    got = f"got {value!r}" if value is not None else "got a value it does not accept"
    subtypes = re.search(r"Subtypes: \[(.*)\]", message)
    plain_types = re.findall(r"<class '(int|float|str|bool)'>", subtypes.group(1) if subtypes else message)
    if not plain_types and re.search(r"Expected a dot import path string|Import path .* does not|not a subclass of",
                                     message):
        # a class-typed argument (an optimizer, a callback, a subclass-mode model): name its subclasses
        bases = [b for b in re.findall(r"([\w]+(?:\.[\w]+)+)", subtypes.group(1) if subtypes else "")
                 if b != "NoneType"]
        base_name = bases[0] if bases else "the expected base class"
        names = _subclass_names(base_name)
        hint = _closest(value or "", names, quote=True) if names else ""
        return (f"{flag} {got}; allowed: the name or import path of a subclass of {base_name}"
                f"{_examples(names)}. {hint}".rstrip())
    allowed = _allowed_types(message)
    return f"{flag} {got}; allowed: {allowed}." if allowed else f"{flag} {got}. {message.strip()}"


def _bad_init_arg(flag: str, class_path: str, option: str, message: str) -> str:
    cls = _import(class_path)
    subtypes = re.search(r"Subtypes: \[(.*)\]", message)
    listed = subtypes.group(1) if subtypes else ""
    if cls is not None and cls in [_import(p) for p in re.findall(r"[\w]+(?:\.[\w]+)+", listed)]:
        # the argument's own base class: --optimizer.lr came before any --optimizer Adam
        example = _EXAMPLE_SUBCLASS.get(cls.__name__, "ClassName")
        choose = f"{flag}+={example}" if "list[" in listed else f"{flag} {example}"
        return (f"{flag}.{option} was given before a class for {flag}: name the class first, e.g. "
                f"{choose} {flag}.{option} ..., or give class_path/init_args in the config.")
    params = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "params", "optimizer")] \
        if cls is not None else []
    hint = _closest(option, params, quote=True)
    return (f"{flag}.{option}: {class_path} has no argument {option!r}; allowed: {', '.join(params) or '(none)'}. "
            f"{hint}".rstrip())


def _item_body(message: str, found: re.Match) -> str:
    """The text of one item of jsonargparse's error list: the lines indented deeper than the item's own."""
    line_start = message.rfind("\n", 0, found.start()) + 1
    indent = len(message[line_start:found.start()]) - len(message[line_start:found.start()].lstrip())
    body = [message[found.end():].split("\n", 1)[0]]
    for line in message[found.end():].split("\n")[1:]:
        if line.strip() and len(line) - len(line.lstrip()) <= indent:
            break
        body.append(line)
    return "\n".join(body).strip()


def _given_value(message: str) -> str | None:
    found = re.search(r"(?:Given value|Got value): (.*?)\s*$", message, re.M)
    return found.group(1) if found else None


def _allowed_types(message: str) -> str:
    literal = re.search(r"Literal\[(.*?)\]", message)
    if literal:
        return "one of " + literal.group(1)
    subtypes = re.search(r"Subtypes: \[(.*)\]", message)
    listed = subtypes.group(1) if subtypes else message.split("Given value type")[0]
    names = re.findall(r"<class '(?:[\w]+\.)*(\w+)'>", listed)
    words = list(dict.fromkeys(_TYPE_WORDS.get(n, f"a {n}") for n in names))
    return " or ".join(words)


def _required(parser: Any, found: re.Match, message: str) -> str:
    keys = [k.strip() for k in found.group(1).split(",")]
    subcommands = getattr(parser, "subcommand_parsers", {})
    flags = [f"--{k.split('.', 1)[1] if k.split('.', 1)[0] in subcommands else k}" for k in keys]
    shown = " and ".join(flags)
    if "." in flags[0]:  # an __init__ argument without a default
        how = f"give {' '.join(f + ' VALUE' for f in flags)}, or set it in a config file"
    else:  # a whole class (subclass mode, no class given)
        how = f"name a class on the command line ({flags[0]}=MyClass) or as class_path in a config file"
    return f"{shown} {'is' if len(flags) == 1 else 'are'} required and not given; {how}. {_help_tip(parser)}"


def _flags(parser: Any) -> list[str]:
    """The parser's flags, without group flags (``--trainer``) that only take a whole config section."""
    flags = set(re.findall(r"--[\w.]+", parser.format_usage()))
    return sorted(f for f in flags if not any(other.startswith(f + ".") for other in flags))


def _closest_flag(flag: str, flags: list[str]) -> str:
    """Close flags of the same section first (--model.hiden -> --model.hidden), compared on the last name only."""
    section, _, leaf = flag.rpartition(".")
    siblings = {f.rpartition(".")[2]: f for f in flags if section and f.rpartition(".")[0] == section}
    close = difflib.get_close_matches(leaf, list(siblings), n=3, cutoff=0.75)
    if close:
        return f"Did you mean {' or '.join(siblings[c] for c in close)}? "
    return _closest(flag, flags)


def _closest(value: str, choices: list[str], quote: bool = False) -> str:
    close = difflib.get_close_matches(value, choices, n=3, cutoff=0.6)
    if not close:
        return ""
    shown = [repr(c) if quote else c for c in close]
    return f"Did you mean {' or '.join(shown)}? "


def _help_tip(parser: Any) -> str:
    return f"Run `{parser.prog} --help` for every flag."


def _examples(names: list[str]) -> str:
    return f" (for example {', '.join(names[:6])})" if names else ""


def _subclass_names(base_path: str) -> list[str]:
    base = _import(base_path)
    if base is None:
        return []
    found, todo = set(), list(base.__subclasses__())
    while todo:
        cls = todo.pop()
        if not cls.__name__.startswith("_"):
            found.add(cls.__name__)
        todo.extend(cls.__subclasses__())
    return sorted(found)


def _import(path: str) -> Any:
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None


_RULES = [
    (r"unrecognized arguments: (.*)", _unknown_flag),
    (r"Subcommand '(\w+)' does not accept option '([^']+)'", _unknown_config_key),
    (r"argument subcommand: invalid choice: '([^']*)' \(choose from (.*)\)", _bad_subcommand),
    (r'Parser key "([^"]+)"', _bad_value),
    (r"the following arguments are required: ([\w., ]+)", _required),
]
