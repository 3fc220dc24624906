"""A Sphinx extension for the API reference.

- Every public name of the packages in `api_coverage_packages` (their `__all__`) must be documented, and every
  public class and function must have a docstring, or the build warns (an error under `-W`), naming them.
- A public constant (`keras_resnet_v2.UNIT_SPECS`) is documented by the `#:` comment above it in the module
  that defines it, not by its type's docstring (a dict's).
"""

import importlib
import inspect
import pkgutil

from sphinx.pycode import ModuleAnalyzer
from sphinx.util import logging

logger = logging.getLogger(__name__)
SKIPPED = {"__version__"}


def missing_names(app, env) -> list[str]:
    documented = set(env.get_domain("py").objects)
    missing = []
    for package in app.config.api_coverage_packages:
        module = importlib.import_module(package)
        for name in module.__all__:
            if name not in SKIPPED and f"{package}.{name}" not in documented:
                missing.append(f"{package}.{name}")
    return missing


def undocumented_names(app) -> list[str]:
    """Public classes and functions without a docstring of their own (a dataclass's is its signature)."""
    names = []
    for package in app.config.api_coverage_packages:
        module = importlib.import_module(package)
        for name in module.__all__:
            value = getattr(module, name)
            if not (inspect.isclass(value) or inspect.isfunction(value)):
                continue
            doc = inspect.getdoc(value) or ""
            if not doc.strip() or (inspect.isclass(value) and doc.startswith(f"{value.__name__}(")):
                names.append(f"{package}.{name}")
    return names


def check(app, env):
    missing = missing_names(app, env)
    if missing:
        logger.warning("the API reference lacks %d public name(s): %s", len(missing), ", ".join(missing),
                       type="api_coverage")
    undocumented = undocumented_names(app)
    if undocumented:
        logger.warning("public names without a docstring: %s", ", ".join(undocumented), type="api_coverage")


def attribute_comment(package: str, name: str) -> list[str]:
    """The `#:` comment above `name`'s assignment in a module of `package`: the defining one first."""
    module = importlib.import_module(package)
    first = [f"{package}.{mod}" for mod, names in getattr(module, "EXPORTS", {}).items() if name in names]
    others = [f"{package}.{info.name}" for info in pkgutil.iter_modules(module.__path__)]
    for module_name in first + others:
        try:
            docs = ModuleAnalyzer.for_module(module_name).find_attr_docs()
        except Exception:  # a module that does not parse or import: look elsewhere
            continue
        if ("", name) in docs:
            return [line for line in docs[("", name)]]
    return []


def constant_docstring(app, what, name, obj, options, lines):
    if what != "data" or "." not in name:
        return
    package, attribute = name.rsplit(".", 1)
    if package not in app.config.api_coverage_packages:
        return
    comment = attribute_comment(package, attribute)
    if not comment:
        logger.warning("%s has no #: comment in its module to document it", name, type="api_coverage")
    lines[:] = comment


def setup(app):
    app.add_config_value("api_coverage_packages", [], "env")
    app.connect("autodoc-process-docstring", constant_docstring)
    app.connect("env-check-consistency", check)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
