"""Registry of frameworks and target families: built-ins by lazy import string, plus entry points and plugins."""

from __future__ import annotations

import importlib
import importlib.metadata
import sys
from fnmatch import fnmatchcase

from .base import Framework, Target

CONSTRAINTS_HINT = "pip install -c constraints.txt 'bncheck[{extra}]'"

BUILTIN_FRAMEWORKS: dict[str, Framework] = {
    "torch": Framework("torch", ("torch",), CONSTRAINTS_HINT.format(extra="torch"), "bncheck.targets.torch_targets:probe"),
    "onnxruntime": Framework(
        "onnxruntime", ("onnxruntime", "onnx"), CONSTRAINTS_HINT.format(extra="onnxruntime"), "bncheck.targets.ort_targets:probe"
    ),
    "tensorflow": Framework(
        "tensorflow", ("tensorflow-cpu|tensorflow", "keras"), CONSTRAINTS_HINT.format(extra="tensorflow"),
        "bncheck.targets.tf_targets:probe", env=(("KERAS_BACKEND", "tensorflow"),),
    ),
    # Keras 2: tf.keras is tf_keras only when TF_USE_LEGACY_KERAS is set before tensorflow is imported, so it
    # cannot share the tensorflow worker (Keras 3). tf-keras requires the 'tensorflow' distribution: beside
    # tensorflow-cpu it is installed without its dependencies (see constraints.txt)
    "tf-keras": Framework(
        "tf-keras", ("tensorflow-cpu|tensorflow", "tf-keras"),
        "pip install --no-deps -c constraints.txt tf-keras==2.21.0 (after 'bncheck[tensorflow]'; tf-keras "
        "requires the 'tensorflow' distribution, which tensorflow-cpu provides under another name)",
        "bncheck.targets.tf_keras_targets:probe", env=(("TF_USE_LEGACY_KERAS", "1"),),
    ),
    # LiteRT: TensorFlow's converter and Keras 3 (the source model) beside the ai_edge_litert interpreter; its own
    # group, so that a missing ai-edge-litert leaves the tensorflow group alone
    "litert": Framework(
        "litert", ("tensorflow-cpu|tensorflow", "keras", "ai-edge-litert"), CONSTRAINTS_HINT.format(extra="litert"),
        "bncheck.targets.litert_targets:probe", env=(("KERAS_BACKEND", "tensorflow"),),
    ),
    "jax": Framework("jax", ("jax", "flax"), CONSTRAINTS_HINT.format(extra="jax"), "bncheck.targets.jax_targets:probe"),
    # onnx.reference needs onnx alone: its own worker, so that it runs where onnxruntime is not installed
    "onnx": Framework("onnx", ("onnx",), CONSTRAINTS_HINT.format(extra="onnx"), "bncheck.targets.onnx_reference_targets:probe"),
    # torch.onnx.export then ONNX Runtime: torch, the exporter's onnxscript and onnxruntime in one process (see
    # torch_onnx_targets for why this is not the torch or the onnxruntime group)
    # torch.compile: a process of its own, compiling beside the eager torch targets (see torch_compile_targets)
    "torch-compile": Framework(
        "torch-compile", ("torch",), CONSTRAINTS_HINT.format(extra="torch"), "bncheck.targets.torch_compile_targets:probe",
        env=(("TORCHINDUCTOR_COMPILE_THREADS", "1"),),
    ),
    "torch-onnx": Framework(
        "torch-onnx", ("torch", "onnxscript", "onnxruntime", "onnx"), CONSTRAINTS_HINT.format(extra="torch-onnx"),
        "bncheck.targets.torch_onnx_targets:probe",
    ),
    # equinox in its own group, so that a missing equinox leaves the flax targets alone
    "equinox": Framework("equinox", ("jax", "equinox"), CONSTRAINTS_HINT.format(extra="equinox"),
                         "bncheck.targets.equinox_targets:probe"),
    "keras-jax": Framework(
        "keras-jax", ("keras", "jax"), CONSTRAINTS_HINT.format(extra="jax,keras"), "bncheck.targets.keras_targets:probe",
        env=(("KERAS_BACKEND", "jax"),),
    ),
    "keras-torch": Framework(
        "keras-torch", ("keras", "torch"), CONSTRAINTS_HINT.format(extra="torch,keras"),
        "bncheck.targets.keras_targets:probe", env=(("KERAS_BACKEND", "torch"),),
    ),
}

BUILTIN_FAMILIES: dict[str, str] = {
    "torch.nn": "bncheck.targets.torch_targets:TorchModule",
    "torch.nn.channels_last": "bncheck.targets.torch_targets:TorchModuleChannelsLast",
    "torch.functional": "bncheck.targets.torch_targets:TorchFunctional",
    "torch.nn.nocudnn": "bncheck.targets.torch_targets:TorchModuleNoCudnn",
    "torch.compile": "bncheck.targets.torch_compile_targets:TorchCompile",
    "torch.onnx.export+ort": "bncheck.targets.torch_onnx_targets:TorchOnnxExport",
    "ort.opset15": "bncheck.targets.ort_targets:OrtOpset15",
    "ort.opset14": "bncheck.targets.ort_targets:OrtOpset14",
    "ort.opset9": "bncheck.targets.ort_targets:OrtOpset9",
    "onnx.reference.opset15": "bncheck.targets.onnx_reference_targets:OnnxReferenceOpset15",
    "onnx.reference.opset14": "bncheck.targets.onnx_reference_targets:OnnxReferenceOpset14",
    "onnx.reference.opset9": "bncheck.targets.onnx_reference_targets:OnnxReferenceOpset9",
    "tf.keras": "bncheck.targets.keras_targets:KerasOnTensorflow",
    "tf.keras.xla": "bncheck.targets.keras_targets:KerasOnTensorflowXla",
    "tf.nn": "bncheck.targets.tf_targets:TfNn",
    "tf.fused": "bncheck.targets.tf_targets:TfFused",
    "tf.nn.xla": "bncheck.targets.tf_targets:TfNnXla",
    "tf.keras+litert": "bncheck.targets.litert_targets:LiteRt",
    "tf.keras+litert.fp16": "bncheck.targets.litert_targets:LiteRtFloat16Weights",
    "tf_keras.fused": "bncheck.targets.tf_keras_targets:TfKerasFused",
    "tf_keras.unfused": "bncheck.targets.tf_keras_targets:TfKerasUnfused",
    "flax.linen": "bncheck.targets.jax_targets:FlaxLinen",
    "flax.linen.two_pass": "bncheck.targets.jax_targets:FlaxLinenTwoPass",
    "flax.nnx": "bncheck.targets.jax_targets:FlaxNnx",
    # the two eager families at odd places: the runner deals a group's families round-robin over its workers
    # (runner.plan_lanes), so both land in one process, where their primitives compile once (measured: 36 s of
    # CPU for flax.nnx.eager alone on the default suite, 11 s after flax.linen.eager)
    "flax.linen.eager": "bncheck.targets.jax_targets:FlaxLinenEager",
    "jax.jit": "bncheck.targets.jax_targets:JaxJit",
    "flax.nnx.eager": "bncheck.targets.jax_targets:FlaxNnxEager",
    "equinox.ema": "bncheck.targets.equinox_targets:EquinoxEma",
    "equinox.batch": "bncheck.targets.equinox_targets:EquinoxBatch",
    "keras.jax": "bncheck.targets.keras_targets:KerasOnJax",
    "keras.torch": "bncheck.targets.keras_targets:KerasOnTorch",
}

ENTRY_POINT_GROUP = "bncheck.targets"

_frameworks: dict[str, Framework] = dict(BUILTIN_FRAMEWORKS)
_families: dict[str, str | type[Target]] = dict(BUILTIN_FAMILIES)
_plugins: list[str] = []
_entry_points_loaded = False


class RegistryError(Exception):
    """A plugin or target specification that cannot be honoured."""


def register_framework(framework: Framework) -> None:
    """Add (or replace) a worker group; plugins call this."""
    _frameworks[framework.name] = framework


def register_target(cls: type[Target]) -> type[Target]:
    """Add a target family class; usable as a decorator by plugins."""
    if not cls.family or not cls.framework:
        raise RegistryError(f"{cls.__name__} must set 'family' and 'framework'")
    _families[cls.family] = cls
    return cls


def load_plugin(module: str) -> None:
    """Import a module that registers targets (searched on PYTHONPATH and the current directory)."""
    if module in _plugins:
        return
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")
    try:
        importlib.import_module(module)
    except Exception as e:  # a plugin that fails to import is a usage error, reported in one line
        raise RegistryError(f"plugin {module!r} failed to import: {type(e).__name__}: {e} (check it runs with 'python -c \"import {module}\"')") from None
    _plugins.append(module)


def plugins() -> list[str]:
    """Plugin modules loaded so far (the worker loads the same ones)."""
    return list(_plugins)


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
        except Exception as e:
            raise RegistryError(f"entry point {ep.name!r} ({ep.value}) failed to load: {type(e).__name__}: {e}") from None
        if callable(obj) and not isinstance(obj, type):
            obj()  # a register() function
        elif isinstance(obj, type) and issubclass(obj, Target):
            register_target(obj)


def frameworks() -> dict[str, Framework]:
    """Every known framework (worker group)."""
    _load_entry_points()
    return dict(_frameworks)


def family_class(family: str) -> type[Target]:
    """The Target subclass of a family, importing its adapter module (never the framework itself)."""
    _load_entry_points()
    spec = _families[family]
    if isinstance(spec, str):
        try:
            return resolve(spec)
        except Exception as e:  # an adapter module that cannot load makes its family unavailable, not the tool
            raise RegistryError(f"target family {family!r} ({spec}) failed to load: {type(e).__name__}: {e}") from None
    return spec


def family_names() -> list[str]:
    """Names of every known target family."""
    _load_entry_points()
    return list(_families)


def families() -> list[type[Target]]:
    """Every target family class that loads."""
    out = []
    for f in family_names():
        try:
            out.append(family_class(f))
        except RegistryError:
            continue
    return out


def resolve(spec: str):  # noqa: ANN201 - returns whatever the import string names
    """Import 'module:attribute'."""
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)


def framework_status(fw: Framework) -> tuple[bool, str, str]:
    """(installed, version, reason) from package metadata alone: nothing is imported."""
    versions = []
    for spec in fw.distributions:  # "a|b": either distribution will do (tensorflow-cpu or tensorflow)
        for dist in spec.split("|"):
            try:
                versions.append(importlib.metadata.version(dist))
                break
            except importlib.metadata.PackageNotFoundError:
                continue
        else:
            return False, "", f"{spec.split('|')[-1]} is not installed; install it with: {fw.install_hint}"
    return True, versions[0] if versions else "", ""


def match_targets(names: list[str], pattern: str | None) -> list[str]:
    """Names matching a comma-separated list of glob patterns (None or '' keeps all)."""
    if not pattern:
        return list(names)
    pats = [p.strip() for p in pattern.split(",") if p.strip()]
    return [n for n in names if any(fnmatchcase(n, p) or fnmatchcase(n, p + "@*") for p in pats)]
