"""The typed values of a conventions record: what the oracle reads to judge and classify (free text stays in notes).

Every enum is a `StrEnum`, so a record serialises to plain strings (results.json, `bncheck backends
--conventions`) and compares equal to them; `coerce` turns a string of a plugin's record into the member, or
fails with one line that names the field and the accepted values.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class MomentumForm(StrEnum):
    """What the framework's momentum weighs."""

    NEW = "new"  # the weight of the batch statistic (PyTorch, TF fused's exponential_avg_factor)
    OLD = "old"  # the weight of the running value (ONNX, Keras, Flax)


class RunningVar(StrEnum):
    """The batch variance that feeds the running-variance update."""

    UNBIASED = "unbiased"  # n/(n-1) times the biased variance (see BesselRule for n = 1)
    BIASED = "biased"


class BesselRule(StrEnum):
    """The Bessel factor of the unbiased variance (running update and batch_var_unbiased)."""

    N_MINUS_1 = "n-1"  # n / (n - 1): 0/0 for one value per channel
    CLAMPED = "max(n-1,1)"  # n / max(n - 1, 1): the biased variance for one value per channel


class EpsPlacement(StrEnum):
    """Where eps enters the normalisation; judging computes the reference with the declared placement."""

    INSIDE = "inside_sqrt"  # (x - mean) / sqrt(var + eps)
    OUTSIDE = "outside_sqrt"  # (x - mean) / (sqrt(var) + eps)


class VarianceAlgorithm(StrEnum):
    """How the batch variance is computed."""

    TWO_PASS = "two-pass"  # mean((x - mean)^2)
    WELFORD = "welford"  # running updates of mean and M2
    ONE_PASS = "one-pass"  # E[x^2] - E[x]^2 (may go negative)
    ONE_PASS_CLAMPED = "one-pass-clamped"  # max(0, E[x^2] - E[x]^2)


class ParameterPrecision(StrEnum):
    """How eps and momentum reach the kernel."""

    FLOAT64 = "float64"  # as given (Python floats, float64 arithmetic)
    FLOAT32_ATTRIBUTES = "float32-attributes"  # rounded to float32 whatever the input dtype (ONNX, TF fused)
    INPUT_DTYPE = "input-dtype"  # constants of the computation dtype (float32 for half and float32, float64 for float64)


class Accumulation(StrEnum):
    """The arithmetic format of the statistics (sums, mean, variance, inverse standard deviation)."""

    FLOAT32_OR_WIDER = "float32-or-wider"  # float32 for half and float32 inputs, float64 for float64
    FLOAT32 = "float32"  # float32 for every input dtype, float64 included
    FLOAT64 = "float64"  # float64 for every input dtype
    INPUT_DTYPE = "input-dtype"  # the input dtype, half precision included


class Summation(StrEnum):
    """The order of the channel sums."""

    PAIRWISE = "pairwise"  # pairwise / cascade: error grows like log(n) u
    BLOCKED = "blocked"  # partial sums of blocks (vector lanes, threads) added at the end
    SEQUENTIAL = "sequential"  # one accumulator per channel, element after element: error grows like n u
    UNSPECIFIED = "unspecified"


class StatisticsDtype(StrEnum):
    """The dtype the batch statistics are rounded to before the output uses them."""

    PARAMETER = "parameter-dtype"  # the parameter dtype (float32 for mixed-precision half cases)
    INPUT = "input-dtype"  # the input dtype: half-precision moments for half inputs (tf.nn)
    ACCUMULATION = "accumulation-dtype"  # the accumulation format (float32 batch statistics for all-half cases)


class Elementwise(StrEnum):
    """The arithmetic of the element-wise part of the normalisation ((x - mean) * invstd * gamma + beta, and dx)."""

    ACCUMULATION = "accumulation"  # in the accumulation format
    INPUT_DTYPE = "input-dtype"  # in the input dtype (half arithmetic for half inputs)


class Subnormals(StrEnum):
    """Whether subnormal inputs and results are kept (IEEE) or flushed to zero (FTZ/DAZ)."""

    PRESERVED = "preserved"
    FLUSHED = "flushed"


class RefusalCondition(StrEnum):
    """A kind of case a framework documents that it refuses by raising."""

    ONE_VALUE_PER_CHANNEL_TRAINING = "one-value-per-channel-in-training"  # batch statistics over one element
    EPS_ZERO_TRAINING = "eps-zero-in-training"  # eps == 0 where batch statistics normalise
    RANK_NOT_4_OR_5 = "rank-not-4-or-5"  # an input of rank 2 or 3
    FLOAT64 = "float64"  # float64 input or parameters
    PARAMETERS_NOT_FLOAT32 = "parameters-not-float32"  # parameters in another dtype than float32


@dataclass(frozen=True)
class Refusal:
    """A documented refusal: on cases meeting `condition` the framework raises `exception` (its class name), whose
    message contains `message` (empty: any message). An execution that raises so is recorded as `refused`."""

    condition: RefusalCondition
    exception: str
    message: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "condition", coerce(RefusalCondition, self.condition, "refusals.condition"))

    def to_dict(self) -> dict[str, str]:
        """JSON-ready form."""
        return {"condition": str(self.condition), "exception": self.exception, "message": self.message}


def coerce(enum: type[StrEnum], value: Any, field: str) -> Any:
    """`value` as a member of `enum`; a ValueError naming the field and the accepted values otherwise."""
    if isinstance(value, enum):
        return value
    try:
        return enum(value)
    except ValueError:
        choices = ", ".join(repr(str(m)) for m in enum)
        raise ValueError(f"conventions.{field}: {value!r} is not one of {choices} "
                         "(free text belongs in notes or sources)") from None
