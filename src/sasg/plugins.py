"""Plug-ins: user modules that register their own triggers, compressors, memories or codecs.

A plug-in is an ordinary Python module that calls :func:`sasg.core.register` when imported. The
command line imports the ones named by ``--plugin MODULE`` (repeatable, or comma-separated) and
by the ``SASG_PLUGINS`` environment variable (comma-separated), before it reads ``--algo``:

- the path of a ``.py`` file (``./my_members.py``, ``lab/members.py``): that file is loaded;
- or a dotted import path (``mylab.members``), imported as any module is: from an installed
  package or a folder on ``PYTHONPATH``. sasg never changes ``sys.path`` itself, so a module of the
  current folder is found only where that folder is on the path (``PYTHONPATH=. sasg ...``); the
  error for a module not found says so.

Importing a plug-in runs its code, as any import does: name only modules you trust.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path

from .config import ConfigError

ENV = "SASG_PLUGINS"


def plugin_names(flags: list[str] | None = None) -> list[str]:
    """The plug-ins of ``SASG_PLUGINS`` then of the flags, each once, in order."""
    names: list[str] = []
    for text in [os.environ.get(ENV, ""), *(flags or [])]:
        for item in str(text).split(","):
            item = item.strip()
            if item and item not in names:
                names.append(item)
    return names


def load_plugins(flags: list[str] | None = None) -> list[str]:
    """Import every plug-in (see the module docstring); return their names. A module that cannot
    be found, fails to import or calls ``sys.exit`` while imported is a
    :class:`~sasg.config.ConfigError` naming it (one line)."""
    names = plugin_names(flags)
    for name in names:
        _import(name)
    return names


def _import(name: str) -> None:
    path = Path(name)
    try:
        if name.endswith(".py") or os.sep in name:
            _load_file(name, path)
        else:
            importlib.import_module(name)
    except ConfigError:
        raise
    except ModuleNotFoundError as e:
        if e.name and path.suffix != ".py" and name.split(".")[0] == e.name.split(".")[0]:
            raise ConfigError(f"plug-in {name!r}: no module named {e.name!r} on the import path; "
                              f"{_how_to_find(name, e.name)}") from None
        hint = ("; a .py plug-in is loaded on its own: a module it imports must be installed or on PYTHONPATH"
                if path.suffix == ".py" else "")
        raise ConfigError(f"plug-in {name!r} failed to import: {e}{hint}") from None
    except SystemExit as e:  # sys.exit() at import would end sasg silently, even with exit code 0
        raise ConfigError(
            f"plug-in {name!r} called sys.exit({e.code!r}) while being imported; a plug-in must only define "
            "and register members: remove the exit (or guard it with if __name__ == '__main__')"
        ) from None
    except Exception as e:  # the plug-in's own error: say whose it is, in one line
        text = str(e).strip().splitlines()[0] if str(e).strip() else "no message"
        raise ConfigError(f"plug-in {name!r} failed to import: {type(e).__name__}: {text}") from None


def _load_file(name: str, path: Path) -> None:
    """Load the plug-in file ``path`` as a module of its own (once per file)."""
    if not path.is_file():
        raise ConfigError(f"plug-in {name!r}: no such file; give a .py file or a module's import path")
    key = f"sasg_plugin_{abs(hash(str(path.resolve())))}"
    if key in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(key, path.resolve())
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[key]
        raise


def _how_to_find(name: str, missing: str) -> str:
    """How to make the plug-in ``name`` importable (``missing``: the module not found), in words."""
    top = name.split(".")[0]
    try:
        here = Path.cwd()
    except OSError:  # the current folder was removed
        here = None
    if missing == top and here is not None:
        for entry in (f"{top}.py", f"{top}/"):
            if (here / entry).exists():
                return (f"{entry} is in the current folder, which sasg does not search: run with PYTHONPATH=. "
                        f"(e.g. PYTHONPATH=. sasg ... --plugin {name}), or give the path of the .py file")
    return ("install it, add the folder that holds it to PYTHONPATH (PYTHONPATH=/path/to/folder), "
            "or give the path of its .py file")
