"""A package's public names imported when first used (PEP 562), so that the commands that only
read a study database (``best``, ``list``) do not load torch: one copy of the hooks every
package's ``__init__`` installs."""

import importlib
import sys
from collections.abc import Callable, Mapping


def lazy_exports(package: str, modules: Mapping[str, str]
                 ) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of package ``package``, whose public name ``n`` is
    defined in module ``modules[n]`` (absolute, or relative to the package where it begins with
    a dot). A name is imported on its first lookup and then kept in the package, so later
    lookups do not come here; any other name is an ``AttributeError``."""

    def __getattr__(name: str):
        if name not in modules:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(modules[name], package), name)
        vars(sys.modules[package])[name] = value  # once: later lookups do not come here
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *modules})

    return __getattr__, __dir__
