"""Light packages: names imported on first use, Keras classes registered when Keras loads.

`import keras_resnet_v2` (and `.training`, `.export`) imports no Keras, TensorFlow, JAX or
PyTorch, so the command lines answer `--help` and argument errors in well under a second. Each
package lists its public names as data (`exports`: submodule -> names); `lazy_package` gives the
package a module `__getattr__` (PEP 562) that imports a submodule the first time one of its
names is used.

One thing must not wait for first use: `keras.models.load_model` finds our layers through
Keras' registry of custom classes, which is filled when the modules defining them run. So
`lazy_package(..., register=...)` imports those modules as soon as Keras itself is imported
(`wrapt.register_post_import_hook`, at once if it already is), whatever the order of the
user's imports; if one of the package's own modules imported Keras, as soon as that module
is done.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from typing import Callable, Mapping, Sequence

import wrapt


def _importing(package: str, finishing: str = "") -> bool:
    """True while a module of `package` (not of a subpackage) is half-run: it imported Keras.

    Importing the package's modules from inside that import would meet that one half-defined
    (Python's "partially initialized module" error). (Subpackages' modules, e.g. training code
    importing Keras, are no such danger: the builders never import them.) `finishing`: a module
    whose last line has run (a post-import hook sees it still marked as initializing).
    """
    prefix = package + "."
    for name, module in list(sys.modules.items()):
        if (name.startswith(prefix) and "." not in name[len(prefix):] and name != finishing
                and getattr(getattr(module, "__spec__", None), "_initializing", False)):
            return True
    return False


def lazy_package(package: str, exports: Mapping[str, Sequence[str]], register: Sequence[str] = (),
                 on_register: Callable[[], None] | None = None, public_subpackages: Sequence[str] = ()):
    """`(__getattr__, __dir__, __all__)` for `package`, whose names live in the submodules `exports` lists.

    `__dir__` lists the exported names and `public_subpackages` (with `__version__` where the
    package has one), not the package's modules or module-level helpers.

    `register`: submodules to import when Keras is imported (they define registered classes);
    `on_register` runs after them.
    """
    owner = {name: f"{package}.{module}" for module, names in exports.items() for name in names}
    namespace = sys.modules[package].__dict__
    modules = {info.name for info in pkgutil.iter_modules(namespace["__path__"])}
    clash = sorted(set(owner) & modules)
    if clash:  # importing that module would set it as the package's attribute, hiding the public name
        raise ImportError(f"{package}: public names {clash} are also names of its modules; rename the modules")

    def __getattr__(name: str):
        if name not in owner:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(owner[name]), name)
        namespace[name] = value  # later lookups are plain attribute reads
        return value

    def __dir__() -> list[str]:
        # The public API only (tab completion, `dir`): the exported names, the version, and the
        # documented subpackages; not the modules, EXPORTS or the helpers that build the package.
        return sorted(set(owner) | set(public_subpackages) | ({"__version__"} & set(namespace)))

    registered = []

    def _register(module) -> None:
        if registered or "keras" not in sys.modules or _importing(package, finishing=module.__name__):
            return
        registered.append(True)
        for module in register:
            importlib.import_module(f"{package}.{module}")
        if on_register is not None:
            on_register()

    if register or on_register:
        # Keras finishing its import is the usual moment. If one of our modules imported Keras from
        # its first lines, that is too early (`_importing`); the moment is then that module's end.
        for name in ("keras", *(f"{package}.{module}" for module in sorted(modules))):
            wrapt.register_post_import_hook(_register, name)
    return __getattr__, __dir__, sorted(owner)
