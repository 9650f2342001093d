"""Plug-ins: user modules that register their own triggers, compressors, memories or codecs.

A plug-in is an ordinary Python module that calls :func:`sasg.core.register` when imported. The
command line imports the ones named by ``--plugin MODULE`` (repeatable, or comma-separated) and
by the ``SASG_PLUGINS`` environment variable (comma-separated), before it reads ``--algo``:

- a dotted import path (``mylab.members``), looked up like ``python -m`` does, the current folder
  first;
- or the path of a ``.py`` file (``./my_members.py``).

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
            return
        cwd = os.getcwd()
        if cwd not in sys.path:  # as `python -m` would: the current folder first
            sys.path.insert(0, cwd)
        importlib.import_module(name)
    except ConfigError:
        raise
    except ModuleNotFoundError as e:
        if e.name and name.split(".")[0] == e.name.split(".")[0]:
            raise ConfigError(
                f"plug-in {name!r}: no module named {e.name!r} (looked in the current folder and "
                "on PYTHONPATH); give its import path or a .py file"
            ) from None
        raise ConfigError(f"plug-in {name!r} failed to import: {e}") from None
    except SystemExit as e:  # sys.exit() at import would end sasg silently, even with exit code 0
        raise ConfigError(
            f"plug-in {name!r} called sys.exit({e.code!r}) while being imported; a plug-in must only define "
            "and register members: remove the exit (or guard it with if __name__ == '__main__')"
        ) from None
    except Exception as e:  # the plug-in's own error: say whose it is, in one line
        text = str(e).strip().splitlines()[0] if str(e).strip() else "no message"
        raise ConfigError(f"plug-in {name!r} failed to import: {type(e).__name__}: {text}") from None
