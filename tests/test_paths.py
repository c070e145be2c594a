"""Kernel-path modules and the typed path fields of targets: no framework needed."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys

from bncheck.targets import family_class, family_names
from bncheck.targets.base import CONVERSION_KINDS, PATH_KINDS
from bncheck.targets.kernel import PathTarget, path_module

FRAMEWORK_MODULES = ("torch", "tensorflow", "keras", "tf_keras", "jax", "flax", "equinox", "onnx", "onnxruntime",
                     "openvino", "ai_edge_litert")


def _path_modules() -> list[str]:
    return sorted({m for f in family_names() if issubclass(family_class(f), PathTarget) for m in family_class(f).path_modules})


def test_every_builtin_family_has_a_path_kind_and_conversions_name_their_source():
    """path_kind is one of PATH_KINDS; an exported/converted family names a registered source family, others none."""
    for f in family_names():
        cls = family_class(f)
        assert cls.path_kind in PATH_KINDS, (f, cls.path_kind)
        if cls.path_kind in CONVERSION_KINDS:
            assert cls.source_family in family_names(), (f, cls.source_family)
        else:
            assert cls.source_family is None, f
        info = cls("cpu").info()
        assert info["path_kind"] == cls.path_kind and info["source_family"] == cls.source_family


def test_path_modules_are_plain():
    """A path module imports no bncheck module, no framework at module level, and has no __future__ import
    (it is embedded in the middle of a reproduction script)."""
    for name in _path_modules():
        tree = ast.parse(inspect.getsource(path_module(name)))
        for node in tree.body:  # module level only: functions import their framework inside
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                assert not any(n.split(".")[0] in FRAMEWORK_MODULES + ("bncheck", "__future__") for n in names), (name, names)
                assert not (isinstance(node, ast.ImportFrom) and node.level), (name, "relative import")
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                assert node.level == 0 and not (node.module or "").startswith("bncheck"), (name, node.module)


def test_importing_the_path_modules_imports_no_framework():
    """Importing every path module (as the parent may, to read a source) leaves every framework unimported."""
    mods = ", ".join(repr(m) for m in _path_modules())
    code = (f"import sys; from bncheck.targets.kernel import path_module; [path_module(m) for m in ({mods},)]; "
            f"bad = [n for n in {FRAMEWORK_MODULES!r} if n in sys.modules]; assert not bad, bad")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_repro_source_embeds_the_module_and_calls_its_entry_with_the_options():
    """The script text is the module verbatim plus a run() that passes the family's options."""
    cls = family_class("torch.functional")
    src = cls("cpu").repro_source()
    assert inspect.getsource(path_module("torch_bn")).strip() in src
    assert "return torch_bn(case, inputs, PHASES, DEVICE, {}, api='functional', channels_last=False, cudnn=True)" in src
    compile(src, "repro", "exec")  # valid Python on its own
