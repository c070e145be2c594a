"""The Target interface, the conventions record, and the framework record; nothing here imports a framework."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar

import numpy as np

from ..cases import Case
from ..inputs import Inputs
# re-exported: adapters and plugins import the vocabulary from here with the record itself
from .vocabulary import (Accumulation, BesselRule, Elementwise, EpsPlacement, MomentumForm, ParameterPrecision, Refusal,  # noqa: F401
                         RefusalCondition, RunningVar, StatisticsDtype, Subnormals, Summation, VarianceAlgorithm, coerce)

Observation = dict[str, np.ndarray]
# how a target's path runs BN: a framework's eager API, a graph runtime, a compiler, a model exported (or
# converted) from another path, or a reference evaluator; exported/converted targets name their source family
PATH_KINDS = ("eager", "graph", "compiled", "exported", "converted", "reference")
CONVERSION_KINDS = ("exported", "converted")
QUANTITIES = ("y", "batch_mean", "batch_var", "batch_var_unbiased", "batch_invstd", "running_mean", "running_var",
              "dx", "dgamma", "dbeta")


class Unsupported(Exception):
    """Raised by a target (in the worker) that finds at run time it cannot execute a case; the message is the reason."""


@dataclass(frozen=True)
class Conventions:
    """What a target means by BN: the data that lets adapters translate and the oracle tell convention from bug.

    The typed fields (vocabulary.py) decide: judging reads eps_placement, the diagnosis reads every one of them
    to call a fitted behaviour a documented convention only when the record declares exactly that behaviour,
    and formats.py reads the arithmetic fields to know which format a case must fit. Strings are accepted and
    checked (a plugin's record may say momentum="new"); free text goes in `notes` and `sources`.
    """

    momentum: MomentumForm  # NEW: weight of the batch statistic (PyTorch); OLD: weight of the running value (ONNX, Keras, Flax)
    running_var: RunningVar  # variance that feeds the running update
    eps_placement: EpsPlacement = EpsPlacement.INSIDE
    default_eps: float | None = 1e-5  # None: the API has no default (the caller must pass one)
    default_momentum: float | None = 0.1  # in the target's own form; None: no running update
    variance_algorithm: VarianceAlgorithm = VarianceAlgorithm.TWO_PASS
    bessel: BesselRule = BesselRule.N_MINUS_1
    accumulation: Accumulation = Accumulation.FLOAT32_OR_WIDER
    summation: Summation = Summation.UNSPECIFIED
    statistics_dtype: StatisticsDtype = StatisticsDtype.PARAMETER
    elementwise: Elementwise = Elementwise.ACCUMULATION
    subnormals: Subnormals = Subnormals.PRESERVED
    parameter_precision: ParameterPrecision = ParameterPrecision.FLOAT64  # how eps and momentum reach the kernel
    refusals: tuple[Refusal, ...] = ()  # what the framework documents it refuses (raises on): recorded as 'refused'
    dtypes: tuple[str, ...] = ("float16", "bfloat16", "float32", "float64")
    # "same": parameters in the input dtype; "same-or-float32": also float32 for half inputs; "any": any float dtype
    param_dtypes: str = "same-or-float32"
    ranks: tuple[int, ...] = (2, 3, 4, 5)  # len(shape)
    layouts: tuple[str, ...] = ("channels_first", "channels_last")
    modes: tuple[str, ...] = ("train", "eval")
    untracked: bool = True  # can run without running statistics (normalising with batch statistics in eval)
    gradients: bool | None = None  # observes dx, dgamma, dbeta (None: as quantities say); grad cases still run forward
    quantities: tuple[str, ...] = QUANTITIES
    optional_quantities: tuple[str, ...] = ()  # observed only for some cases (never reported as missing)
    notes: str = ""
    sources: tuple[str, ...] = ()
    # public upstream issues or pull requests about this path's BN (URLs): the markdown issue bodies cite them
    upstream_issues: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name, enum in _TYPED.items():
            object.__setattr__(self, name, coerce(enum, getattr(self, name), name))
        object.__setattr__(self, "refusals", tuple(r if isinstance(r, Refusal) else Refusal(**r) for r in self.refusals))
        for name in ("dtypes", "ranks", "layouts", "modes", "quantities", "optional_quantities", "sources",
                     "upstream_issues"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        unknown = sorted((set(self.quantities) | set(self.optional_quantities)) - set(QUANTITIES))
        if unknown:
            raise ValueError(f"conventions.quantities: unknown quantity {unknown[0]!r} (choose from {', '.join(QUANTITIES)})")
        grads = {"dx", "dgamma", "dbeta"} & set(self.quantities)
        if self.gradients is None:
            object.__setattr__(self, "gradients", bool(grads))
        elif self.gradients != bool(grads):
            raise ValueError("conventions.gradients must be true exactly when quantities name dx, dgamma or dbeta "
                             f"(gradients={self.gradients}, quantities={', '.join(self.quantities)})")
        running = {"running_mean", "running_var"} & set(self.quantities)
        if self.default_momentum is None and running:
            raise ValueError("conventions.default_momentum is None (no running update) but quantities name "
                             + ", ".join(sorted(running)))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (enums are strings)."""
        d = asdict(self)
        d["refusals"] = [r.to_dict() for r in self.refusals]
        return {k: (str(v) if k in _TYPED else v) for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Conventions":
        """The record of a to_dict() (as stored with a run); unknown keys are ignored."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_framework_momentum(self, canonical: float) -> float:
        """Translate canonical momentum (weight of the new statistic) into this target's form."""
        return canonical if self.momentum == MomentumForm.NEW else 1.0 - canonical


_TYPED = {"momentum": MomentumForm, "running_var": RunningVar, "eps_placement": EpsPlacement,
          "variance_algorithm": VarianceAlgorithm, "bessel": BesselRule, "accumulation": Accumulation,
          "summation": Summation, "statistics_dtype": StatisticsDtype, "elementwise": Elementwise,
          "subnormals": Subnormals, "parameter_precision": ParameterPrecision}


@dataclass(frozen=True)
class Framework:
    """A worker group: the distributions it needs, how to install them, and where its probe lives."""

    name: str
    distributions: tuple[str, ...]
    install_hint: str
    probe: str  # "module:function" run in the worker; returns {"version": str, "devices": [str, ...]}
    env: tuple[tuple[str, str], ...] = ()  # environment of the worker process, e.g. (("KERAS_BACKEND", "jax"),)


class Target:
    """One BN implementation path; instantiated per device. Subclasses set the class attributes and `run`."""

    family: ClassVar[str] = ""
    framework: ClassVar[str] = ""
    description: ClassVar[str] = ""
    conventions: ClassVar[Conventions]
    devices: ClassVar[tuple[str, ...] | None] = None  # device kinds it runs on ("cpu", "cuda"); None: all probed
    package: ClassVar[str | None] = None  # the distribution whose version it reports (None: its framework's)
    path_kind: ClassVar[str] = "eager"  # one of PATH_KINDS
    source_family: ClassVar[str | None] = None  # exported/converted paths: the family whose model they run

    def __init__(self, device: str = "cpu") -> None:
        self.device = device

    @property
    def name(self) -> str:
        """'<family>@<device>', e.g. 'torch.nn@cpu'."""
        return f"{self.family}@{self.device}"

    def supports(self, case: Case) -> str | None:
        """None when this target can run `case`, else the reason it cannot (checked in the parent)."""
        cv = self.conventions
        if case.dtype not in cv.dtypes:
            return f"no {case.dtype} kernel (supports {', '.join(cv.dtypes)})"
        if case.param_dtype != case.dtype and cv.param_dtypes != "any":
            if cv.param_dtypes == "same":
                return f"parameters must have the input dtype {case.dtype}, case has {case.param_dtype}"
            if not (case.dtype in ("float16", "bfloat16") and case.param_dtype == "float32"):
                return f"{case.param_dtype} parameters with {case.dtype} input are not accepted"
        if len(case.shape) not in cv.ranks:
            return f"input rank {len(case.shape)} not accepted (ranks {', '.join(map(str, cv.ranks))})"
        if case.layout not in cv.layouts:
            return f"layout {case.layout} not accepted"
        needs = {"train" if p != "eval" else "eval" for p in case.phases}
        missing = sorted(needs - set(cv.modes))
        if missing:
            return f"no {missing[0]}-mode path"
        if not case.track_running_stats and not cv.untracked:
            return "needs running statistics (track_running_stats=false is not expressible)"
        return None  # a target without gradients still runs grad cases: dx, dgamma, dbeta are simply not observed

    def run(self, case: Case, inputs: Inputs) -> Observation:
        """Execute `case` in the worker and return the observed quantities, keyed like the reference."""
        raise NotImplementedError

    def info(self) -> dict[str, Any]:
        """JSON-ready description of this target."""
        return {"name": self.name, "family": self.family, "framework": self.framework, "device": self.device,
                "description": self.description, "path_kind": self.path_kind, "source_family": self.source_family,
                "conventions": self.conventions.to_dict()}


def flatten_channels(case: Case, a: np.ndarray) -> np.ndarray:
    """A physical array as (elements per channel, C)."""
    if case.layout == "channels_first":
        a = np.moveaxis(a, 1, -1)
    return a.reshape(-1, case.channels)


def to_channels_first(case: Case, a: np.ndarray) -> np.ndarray:
    """A physical array in (N, C, spatial...) order (a view)."""
    return np.moveaxis(a, -1, 1) if case.layout == "channels_last" else a


def from_channels_first(case: Case, a: np.ndarray) -> np.ndarray:
    """An (N, C, spatial...) array back in the case's physical layout, contiguous."""
    return np.ascontiguousarray(np.moveaxis(a, 1, -1) if case.layout == "channels_last" else a)


@dataclass
class Probe:
    """What a worker reported about its framework."""

    framework: str
    ok: bool
    version: str = ""
    devices: list[str] = field(default_factory=list)
    reason: str = ""
    details: dict[str, Any] = field(default_factory=dict)
