"""Targets whose kernel path is a plain module under bncheck/targets/paths/: the adapter calls it in the worker,
and the reproduction script embeds the same module verbatim and calls the same function.

A path module imports no bncheck module and imports its framework only inside its functions. Its entry point
has the signature `entry(case, inputs, phases, device, cache, **options)`: `case` is the plain dictionary of the
case's canonical JSON, `inputs` the NumPy arrays, `phases` the phase names in order, `device` 'cpu' or 'cuda',
`cache` a dictionary the path may fill with reusable artefacts (sessions, compiled functions) that never change
a result, and `options` the target's literal keyword arguments. A path that finds at run time that it cannot
express a case raises its module's `PathUnsupported`. A target may embed several modules (a conversion path
embeds its exporter's module and the runtime's): they are written so that their names do not collide.
"""

from __future__ import annotations

import importlib
import inspect
from types import ModuleType
from typing import Any, ClassVar

from ..cases import Case
from ..inputs import Inputs
from .base import Observation, Target, Unsupported

PATHS_PACKAGE = "bncheck.targets.paths"


def path_module(name: str) -> ModuleType:
    """A kernel-path module by its name under bncheck/targets/paths/ (imports no framework)."""
    return importlib.import_module(f"{PATHS_PACKAGE}.{name}")


class PathTarget(Target):
    """A target that runs `path_entry` of its last path module; subclasses set the class attributes."""

    path_modules: ClassVar[tuple[str, ...]] = ()  # modules under bncheck/targets/paths/, embedded in this order
    path_entry: ClassVar[str] = ""  # the entry point, a function of the last module

    def __init__(self, device: str = "cpu") -> None:
        super().__init__(device)
        self._cache: dict[Any, Any] = {}  # what the path reuses across cases (sessions, compiled functions)

    def path_options(self) -> dict[str, Any]:
        """Literal keyword arguments of the entry point (their repr is written into reproduction scripts)."""
        return {}

    def path_functions(self) -> dict[str, str]:
        """Keyword arguments of the entry point that are functions of the embedded modules, by function name."""
        return {}

    def _modules(self) -> list[ModuleType]:
        return [path_module(m) for m in self.path_modules]

    def _function(self, modules: list[ModuleType], name: str) -> Any:
        for m in reversed(modules):
            if hasattr(m, name):
                return getattr(m, name)
        raise AttributeError(f"no path module of {self.family} defines {name!r}")

    def run(self, case: Case, inputs: Inputs) -> Observation:
        """Run the path's entry point on the case; a PathUnsupported it raises becomes Unsupported."""
        modules = self._modules()
        entry = getattr(modules[-1], self.path_entry)
        kwargs = {**self.path_options(), **{k: self._function(modules, f) for k, f in self.path_functions().items()}}
        refusals = tuple(m.PathUnsupported for m in modules if isinstance(getattr(m, "PathUnsupported", None), type))
        try:
            return entry(case.to_dict(), inputs, list(case.phases), self.device, self._cache, **kwargs)
        except refusals as e:
            raise Unsupported(str(e)) from None

    def repro_source(self) -> str:
        """The path modules' source, verbatim, then `run(case, inputs)` calling the entry point as the adapter does
        (the script defines PHASES and DEVICE)."""
        modules = self._modules()
        parts = []
        for m in modules:
            parts += [f"# ---- {m.__name__.rsplit('.', 1)[-1]}.py, verbatim (bncheck/targets/paths/) ----",
                      inspect.getsource(m).strip(), ""]
        args = [f"{k}={v!r}" for k, v in self.path_options().items()]
        args += [f"{k}={f}" for k, f in self.path_functions().items()]
        parts += [
            "",
            "# ---- the entry point, with this target's options ----",
            "def run(case, inputs):",
            f'    """Every phase of the case through {self.family}, as bncheck\'s adapter runs it."""',
            f"    return {self.path_entry}(case, inputs, PHASES, DEVICE, {{}}{''.join(', ' + a for a in args)})",
        ]
        return "\n".join(parts)
