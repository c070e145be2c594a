"""Case generation: cartesian grids over case fields, and the definitions of the shipped suites.

`bncheck generate suites` (or `python -m bncheck.generate [FOLDER]`) rewrites the shipped suites in the package's
suites/ folder from these definitions; a test checks that the shipped files are exactly what they produce.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path
from typing import Any, Callable, Iterable

from . import __version__
import numpy as np

from .cases import Case, CaseError, case_from_dict, write_case_file

GENERATOR = f"bncheck.generate/{__version__}"

SHAPES = {2: [16, 6], 3: [8, 6, 12], 4: [8, 6, 6, 6], 5: [4, 6, 4, 4, 4]}


def regime(name: str, **arrays: dict[str, Any]) -> dict[str, Any]:
    """A value regime: a name plus distributions for some arrays (the rest keep their defaults)."""
    return {"name": name, **arrays}


STANDARD = regime("standard")
OFFSET_1E2 = regime("mean-offset-1e2", x={"dist": "normal", "loc": 100.0, "scale": 1.0})
OFFSET_1E4 = regime("mean-offset-1e4", x={"dist": "normal", "loc": 1e4, "scale": 1.0})
TINY_VARIANCE = regime("variance-near-eps", x={"dist": "normal", "loc": 0.5, "scale": 3e-3})
WIDE = regime("wide-values", x={"dist": "uniform", "low": -300.0, "high": 300.0},
              gamma={"dist": "uniform", "low": -2.0, "high": 2.0})


def grid(base: dict[str, Any], **axes: Iterable[Any]) -> list[Case]:
    """Every combination of the axis values applied to `base`; invalid combinations raise CaseError."""
    names = list(axes)
    out = []
    for values in itertools.product(*(list(axes[n]) for n in names)):
        d = {**base, **dict(zip(names, values))}
        d.setdefault("meta", {})["generator"] = GENERATOR
        out.append(case_from_dict(d))
    return out


def _unique(cases: list[Case]) -> list[Case]:
    seen: set[str] = set()
    out = []
    for c in cases:
        if c.case_id not in seen:
            seen.add(c.case_id)
            out.append(c)
    return out


def smoke_suite() -> list[Case]:
    """Fast, broad coverage for CI: every rank, dtype and mode once, with gradients."""
    cases: list[Case] = []
    for rank, dtype, mode in [(2, "float32", "train"), (3, "float16", "train"), (4, "float32", "trajectory"),
                              (5, "float64", "train"), (4, "bfloat16", "eval"), (3, "float32", "eval")]:
        cases += grid({"shape": SHAPES[rank], "grad": True, "seed": 1}, dtype=[dtype], mode=[mode])
    cases += grid({"shape": SHAPES[4], "seed": 2, "grad": True}, layout=["channels_last"], mode=["train", "eval"])
    cases += grid({"shape": SHAPES[3], "seed": 3}, affine=[False], track_running_stats=[True, False])
    cases += grid({"shape": SHAPES[4], "seed": 4, "dtype": "float16", "param_dtype": "float16"}, mode=["train", "eval"])
    return _unique(cases)


def default_suite() -> list[Case]:
    """The audit: every rank x dtype x mode with gradients, layouts, flags, eps, momentum and stressed regimes."""
    cases: list[Case] = []
    for rank in (2, 3, 4, 5):
        cases += grid({"shape": SHAPES[rank], "grad": True, "seed": 10 + rank},
                      dtype=["float16", "bfloat16", "float32", "float64"], mode=["train", "eval"])
        cases += grid({"shape": SHAPES[rank], "grad": True, "seed": 20 + rank, "mode": "trajectory", "steps": 3},
                      dtype=["float16", "float32", "float64"])
    for rank in (3, 4, 5):
        cases += grid({"shape": SHAPES[rank], "layout": "channels_last", "grad": True, "seed": 30 + rank},
                      dtype=["float16", "float32", "float64"], mode=["train", "eval"])
    cases += grid({"shape": SHAPES[4], "grad": True, "seed": 40}, affine=[True, False], track_running_stats=[False],
                  mode=["train", "eval"])
    cases += grid({"shape": SHAPES[4], "grad": True, "seed": 41, "affine": False}, mode=["train", "eval"])
    cases += grid({"shape": SHAPES[4], "seed": 42, "dtype": "float16", "param_dtype": "float16"}, mode=["train", "eval"])
    cases += grid({"shape": SHAPES[4], "seed": 43, "mode": "trajectory", "steps": 3}, eps=[0.0, 1e-3, 0.1])
    cases += grid({"shape": SHAPES[4], "seed": 44, "mode": "trajectory", "steps": 3}, momentum=[0.0, 0.01, 0.5, 1.0])
    cases += grid({"shape": [2, 6, 3, 3], "seed": 45, "grad": True}, mode=["train", "trajectory"], dtype=["float32", "float64"])
    cases += grid({"shape": SHAPES[4], "seed": 46, "grad": True}, regime=[OFFSET_1E2, OFFSET_1E4, TINY_VARIANCE, WIDE],
                  dtype=["float32", "float64"], mode=["train"])
    cases += grid({"shape": SHAPES[4], "seed": 47, "grad": True}, regime=[OFFSET_1E2, WIDE], dtype=["float16", "bfloat16"])
    cases += grid({"shape": [64, 8, 16, 16], "seed": 48, "grad": True}, dtype=["float16", "float32"])
    return _unique(cases)


# ---- hazards --------------------------------------------------------------------------------------
def _x(dist: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {**dist, **extra}


NORMAL = {"dist": "normal", "loc": 0.0, "scale": 1.0}
TRAIN_TRAJ = {"mode": ["train", "trajectory"]}

# name -> (one-line description for the README, base case, grid axes)
HAZARDS: dict[str, tuple[str, dict[str, Any], dict[str, list[Any]]]] = {
    "mean-offset-1e2": ("activations whose mean is 1e2 times their spread: a one-pass variance loses 4 digits",
                        {"shape": [8, 6, 6, 6], "grad": True, "regime": regime("mean-offset-1e2", x=_x(NORMAL, loc=1e2))},
                        {"dtype": ["float32", "float64"], **TRAIN_TRAJ}),
    "mean-offset-1e4": ("mean 1e4 times the spread: one-pass float32 variance is noise",
                        {"shape": [8, 6, 6, 6], "grad": True, "regime": regime("mean-offset-1e4", x=_x(NORMAL, loc=1e4))},
                        {"dtype": ["float32", "float64"], **TRAIN_TRAJ}),
    "mean-offset-1e6": ("mean 1e6 times the spread: float32 inputs keep only about 4 bits of the spread",
                        {"shape": [8, 6, 6, 6], "grad": True, "regime": regime("mean-offset-1e6", x=_x(NORMAL, loc=1e6))},
                        {"dtype": ["float32", "float64"], "mode": ["train"]}),
    "mean-offset-1e8": ("mean 1e8 times the spread: beyond float32 (spacing 8 at 1e8); float64 still resolves it",
                        {"shape": [8, 6, 6, 6], "grad": True, "regime": regime("mean-offset-1e8", x=_x(NORMAL, loc=1e8))},
                        {"dtype": ["float32", "float64"], "mode": ["train"]}),
    "variance-below-eps": ("channel variance 1e-8, far below eps: eps dominates the normalisation",
                           {"shape": [8, 6, 6, 6], "grad": True, "regime": regime("variance-below-eps", x=_x(NORMAL, loc=0.5, scale=1e-4))},
                           {"eps": [1e-5, 1e-3], **TRAIN_TRAJ}),
    "constant-channels": ("channels 0 and 2 constant: zero variance, y must equal beta there",
                          {"shape": [8, 6, 6, 6], "grad": True, "regime": regime("constant-channels", x=_x(
                              NORMAL, channels={"0": {"dist": "constant", "value": 3.0}, "2": {"dist": "constant", "value": -1.5}}))},
                          {"dtype": ["float16", "float32", "float64"], **TRAIN_TRAJ}),
    "one-value-per-channel": ("training on a batch of one (N, C) row: zero variance and an undefined unbiased running variance",
                              {"shape": [1, 6], "grad": True}, {"dtype": ["float32", "float64"], "mode": ["train"]}),
    "many-elements": ("1,048,576 elements per channel: summation order and accumulation precision show",
                      {"shape": [16, 2, 256, 256], "grad": False, "regime": regime("many-elements-offset", x=_x(NORMAL, loc=3.0))},
                      {"dtype": ["float16", "float32"], "mode": ["train"]}),
    "float16-stat-overflow": ("float16 values of spread 300: the variance (9e4) exceeds float16's maximum 65504",
                              {"shape": [8, 6, 6, 6], "dtype": "float16", "grad": True,
                               "regime": regime("float16-stat-overflow", x=_x(NORMAL, scale=300.0))},
                              {"param_dtype": ["float32", "float16"], **TRAIN_TRAJ}),
    "float16-stat-underflow": ("float16 values of spread 1e-4: the variance (1e-8) is below float16's smallest subnormal",
                               {"shape": [8, 6, 6, 6], "dtype": "float16", "grad": True, "eps": 1e-9,
                                "regime": regime("float16-stat-underflow", x=_x(NORMAL, scale=1e-4))},
                               {"param_dtype": ["float32", "float16"], "mode": ["train"]}),
    "bfloat16-stat-overflow": ("bfloat16 values of spread 1e19: squares overflow float32 accumulation (3.4e38)",
                               {"shape": [8, 6, 6, 6], "dtype": "bfloat16", "grad": True,
                                "regime": regime("bfloat16-stat-overflow", x=_x(NORMAL, scale=1e19))},
                               {"mode": ["train"]}),
    "bfloat16-stat-underflow": ("bfloat16 values of spread 1e-25: the variance (1e-50) underflows float32",
                                {"shape": [8, 6, 6, 6], "dtype": "bfloat16", "grad": True, "eps": 1e-30,
                                 "regime": regime("bfloat16-stat-underflow", x=_x(NORMAL, scale=1e-25))},
                                {"mode": ["train"]}),
    "subnormal-inputs": ("float32 inputs of spread 1e-39 (subnormal): flush-to-zero changes every statistic",
                         {"shape": [8, 6, 6, 6], "grad": True, "eps": 1e-30,
                          "regime": regime("subnormal-inputs", x=_x(NORMAL, scale=1e-39))},
                         {"dtype": ["float32"], "mode": ["train", "eval"]}),
    "nan-input": ("one NaN in the batch: its channel must be NaN, every other channel exact",
                  {"shape": [8, 6, 6, 6], "grad": True, "regime": regime("nan-input", x=_x(NORMAL, inject={"value": "nan", "count": 1}))},
                  {"mode": ["train", "eval"]}),
    "inf-input": ("one +Inf in the batch: its channel's statistics are Inf/NaN, the others exact",
                  {"shape": [8, 6, 6, 6], "grad": True, "regime": regime("inf-input", x=_x(NORMAL, inject={"value": "inf", "count": 1}))},
                  {"mode": ["train", "eval"]}),
    "nan-running-stats": ("a NaN running mean: eval output of that channel NaN, training must not spread it",
                          {"shape": [8, 6, 6, 6], "grad": True, "regime": regime("nan-running-stats", running_mean={
                              "dist": "uniform", "low": -0.5, "high": 0.5, "inject": {"value": "nan", "count": 1}})},
                          {"mode": ["train", "eval"]}),
    "inf-running-var": ("an infinite running variance: eval output of that channel is beta",
                        {"shape": [8, 6, 6, 6], "grad": True, "regime": regime("inf-running-var", running_var={
                            "dist": "uniform", "low": 0.5, "high": 1.5, "inject": {"value": "inf", "count": 1}})},
                        {"mode": ["train", "eval"]}),
    "eps-zero": ("eps = 0, with a constant channel: 0/0 in normalisation",
                 {"shape": [8, 6, 6, 6], "eps": 0.0, "grad": True, "regime": regime("eps-zero-constant-channel", x=_x(
                     NORMAL, channels={"1": {"dist": "constant", "value": 2.0}}))},
                 {"mode": ["train", "eval"]}),
    "momentum-zero": ("momentum 0: running statistics must not move",
                      {"shape": [8, 6, 6, 6], "momentum": 0.0, "mode": "trajectory", "steps": 3}, {"dtype": ["float32", "float64"]}),
    "momentum-one": ("momentum 1: running statistics are the last batch's",
                     {"shape": [8, 6, 6, 6], "momentum": 1.0, "mode": "trajectory", "steps": 3}, {"dtype": ["float32", "float64"]}),
    "channels-last": ("channels-last layouts in every rank that has one",
                      {"layout": "channels_last", "grad": True, "mode": "trajectory", "steps": 2},
                      {"shape": [[8, 6, 12], [8, 6, 6, 6], [4, 6, 4, 4, 4]], "dtype": ["float16", "float32"]}),
    "batch-size-one": ("batch size 1 in every rank: statistics over the spatial elements of one sample",
                       {"batch": 1, "grad": True},
                       {"shape": [[1, 6, 12], [1, 6, 6, 6], [1, 6, 4, 4, 4]], "mode": ["train", "trajectory"]}),
}


def hazard_cases(name: str) -> list[Case]:
    """The cases of one named hazard."""
    _, base, axes = HAZARDS[name]
    base = {"regime": regime(name), **{k: v for k, v in base.items() if k != "batch"}}
    cases = grid({**base, "seed": 100 + list(HAZARDS).index(name)}, **axes)
    return [c.replace(meta={**c.meta, "hazard": name}) for c in cases]


def hazards_suite() -> list[Case]:
    """Every hazard in the catalogue."""
    return _unique([c for name in HAZARDS for c in hazard_cases(name)])


def trajectories_suite() -> list[Case]:
    """Multi-step training: running statistics after every step, then evaluation on a fresh batch."""
    cases: list[Case] = []
    for rank in (2, 3, 4, 5):
        cases += grid({"shape": SHAPES[rank], "mode": "trajectory", "grad": True, "seed": 200 + rank},
                      steps=[1, 5], dtype=["float16", "float32", "float64"])
    cases += grid({"shape": SHAPES[4], "mode": "trajectory", "steps": 10, "seed": 210}, momentum=[0.01, 0.1, 0.5, 0.9])
    cases += grid({"shape": [2, 6, 3, 3], "mode": "trajectory", "steps": 8, "seed": 211}, dtype=["float32", "float64"])
    cases += grid({"shape": SHAPES[4], "mode": "trajectory", "steps": 5, "seed": 212, "regime": OFFSET_1E2}, dtype=["float32"])
    return _unique(cases)


# ---- seeded random fuzzing ------------------------------------------------------------------------
RANDOM_REGIMES = [STANDARD, OFFSET_1E2, OFFSET_1E4, TINY_VARIANCE, WIDE]


def _random_fields(rng: np.random.Generator, pick_regime: Callable[[], dict[str, Any]], strategy: str) -> dict[str, Any]:
    """One case's fields drawn from the whole case space, in random_cases' fixed order of draws; the regime comes from
    `pick_regime`, called where random_cases draws it."""
    pick = lambda seq: seq[int(rng.integers(len(seq)))]  # noqa: E731
    rank = int(rng.integers(2, 6))
    shape = [int(rng.integers(1, 17)), int(rng.integers(1, 9))] + [int(rng.integers(1, 9)) for _ in range(rank - 2)]
    dtype = pick(["float16", "bfloat16", "float32", "float64"])
    mode = pick(["train", "eval", "trajectory"])
    return {
        "shape": shape, "dtype": dtype,
        "param_dtype": pick(["float32", dtype]) if dtype in ("float16", "bfloat16") else dtype,
        "layout": pick(["channels_first", "channels_last"]) if rank > 2 else "channels_first",
        "mode": mode, "steps": int(rng.integers(1, 6)) if mode == "trajectory" else (1 if mode == "train" else 0),
        "eps": pick([0.0, 1e-8, 1e-5, 1e-3, 0.1]), "momentum": pick([0.0, 0.01, 0.1, 0.5, 0.99, 1.0]),
        "affine": bool(rng.integers(2)), "track_running_stats": bool(rng.integers(2)), "grad": bool(rng.integers(2)),
        "regime": pick_regime(), "seed": int(rng.integers(2**31)),
        "meta": {"generator": GENERATOR, "strategy": strategy},
    }


def random_cases(n: int, seed: int) -> list[Case]:
    """`n` valid cases drawn from the whole case space by a PCG64 stream seeded with `seed` (reproducible)."""
    rng = np.random.Generator(np.random.PCG64(seed))
    pick = lambda seq: seq[int(rng.integers(len(seq)))]  # noqa: E731
    regimes = RANDOM_REGIMES + [HAZARDS[h][1].get("regime") for h in ("constant-channels", "nan-input", "inf-running-var")]
    out: list[Case] = []
    while len(out) < n:
        d = _random_fields(rng, lambda: pick([r for r in regimes if r is not None]), f"random/{seed}")
        try:
            out.append(case_from_dict(d))
        except CaseError:  # e.g. a per-channel override naming a channel the drawn shape lacks: draw again
            continue
    return out


# Arms of a fuzzing campaign (bncheck fuzz): a random arm draws the whole case space with one value regime; a hazard
# arm draws it too, then fixes what the hazard's catalogue entry fixes (its regime, shape, dtype, eps, ...) and picks
# one value of each of its grid axes. many-elements (2M elements a case) would dominate a campaign's time: left out.
FUZZ_LEFT_OUT = ("many-elements",)
FUZZ_ARMS: tuple[str, ...] = tuple([f"random/{r['name']}" for r in RANDOM_REGIMES]
                                   + [f"hazard/{h}" for h in HAZARDS if h not in FUZZ_LEFT_OUT])
_DRAWS_PER_CASE = 200  # attempts at a valid case per arm before giving up (a catalogue entry that never validates)


def fuzz_case(rng: np.random.Generator, arm: str, strategy: str = "fuzz") -> Case:
    """One valid case of `arm` (one of FUZZ_ARMS) drawn from `rng`; `meta` records the strategy, the arm and the hazard."""
    kind, _, name = arm.partition("/")
    if kind == "random":
        chosen = next((r for r in RANDOM_REGIMES if r["name"] == name), None)
        if chosen is None:
            raise ValueError(f"unknown fuzzing arm {arm!r} (arms: {', '.join(FUZZ_ARMS)})")
        fixed: dict[str, Any] = {}
        axes: dict[str, list[Any]] = {}
    elif kind == "hazard" and name in HAZARDS:
        _, base, axes = HAZARDS[name]
        fixed = {"regime": regime(name), **{k: v for k, v in base.items() if k != "batch"}}
        chosen = fixed["regime"]
    else:
        raise ValueError(f"unknown fuzzing arm {arm!r} (arms: {', '.join(FUZZ_ARMS)})")
    for _ in range(_DRAWS_PER_CASE):
        d = _random_fields(rng, lambda: chosen, strategy)
        drawn = dict(d)
        chosen_axes = {k: v[int(rng.integers(len(v)))] for k, v in axes.items()}
        d.update({**fixed, **chosen_axes})
        given = set(fixed) | set(chosen_axes)
        if "dtype" in given and "param_dtype" not in given:  # keep float32 parameters for half data when drawn
            d["param_dtype"] = "float32" if d["dtype"] in ("float16", "bfloat16") and drawn["param_dtype"] == "float32" else d["dtype"]
        if len(d["shape"]) == 2 and "layout" not in given:
            d["layout"] = "channels_first"
        if "steps" not in given:
            d["steps"] = {"train": 1, "eval": 0}.get(d["mode"], max(1, drawn["steps"]))
        d["meta"] = {**d["meta"], "arm": arm, **({"hazard": name} if kind == "hazard" else {})}
        try:
            return case_from_dict(d)
        except CaseError:  # e.g. constant channels 0 and 2 on a drawn shape with two channels: draw again
            continue
    raise RuntimeError(f"fuzzing arm {arm} drew no valid case in {_DRAWS_PER_CASE} attempts")


SUITES = {"smoke": smoke_suite, "default": default_suite, "hazards": hazards_suite, "trajectories": trajectories_suite}


def main(argv: list[str] | None = None) -> int:
    """Write the shipped suites into FOLDER (default: the package's suites folder)."""
    from .cases import shipped_suites_dir

    args = argv if argv is not None else sys.argv[1:]
    out = Path(args[0]) if args else shipped_suites_dir()
    out.mkdir(parents=True, exist_ok=True)
    for name, build in SUITES.items():
        cases = build()
        write_case_file(out / f"{name}.jsonl", cases)
        print(f"{out / name}.jsonl: {len(cases)} cases")
    return 0


if __name__ == "__main__":
    sys.exit(main())
