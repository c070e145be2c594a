"""JAX's BN paths under jax.jit: flax.linen.BatchNorm (default one-pass or two-pass variance), flax.nnx.BatchNorm,
and a BN written with jax.numpy / jax.lax, each compiled once per static configuration (jax.jit re-traces only
for new shapes), with gradients by jax.vjp.

A kernel-path module: the adapter (bncheck.targets.jax_targets) calls `jax_bn` in the jax worker, and a
reproduction script embeds this file verbatim and calls the same function. So it imports no bncheck module and
imports jax and flax only inside its functions; a case is the plain dictionary of its canonical JSON. x64 is
switched on before the first array is created, so float64 cases really run in float64.
"""
from typing import Any, Callable

import numpy as np


class PathUnsupported(Exception):
    """This process cannot run the case (the adapter records it as unsupported, with this reason)."""


def jax_enable_x64() -> None:
    """Switch on 64-bit arrays (idempotent); must happen before any float64 array is created."""
    import jax

    if not jax.config.read("jax_enable_x64"):
        jax.config.update("jax_enable_x64", True)


def jax_gpu_devices() -> list:
    """JAX's GPU devices, or [] when there is no GPU backend."""
    import jax

    try:
        return list(jax.devices("gpu"))
    except RuntimeError:
        return []


def jax_device(device: str) -> Any:
    """The jax.Device a device name refers to ('cuda' is the first GPU; unverified without one)."""
    import jax

    if device == "cuda":
        gpus = jax_gpu_devices()
        if not gpus:
            raise PathUnsupported("jax sees no GPU (jax.devices('gpu') is empty)")
        return gpus[0]
    return jax.devices("cpu")[0]


def jax_dtype(name: str) -> Any:
    """jax.numpy dtype for a dtype name."""
    import jax.numpy as jnp

    return {"float16": jnp.float16, "bfloat16": jnp.bfloat16, "float32": jnp.float32, "float64": jnp.float64}[name]


def jax_put(a: np.ndarray, dtype: str, device: Any) -> Any:
    """NumPy transport array -> a jax array of `dtype` on `device` (exact: the values are representable)."""
    import jax

    return jax.device_put(np.array(a, dtype=np.dtype(jax_dtype(dtype))), device)  # float32 -> bfloat16: exact


def jax_numpy(a: Any) -> np.ndarray:
    """jax array -> a fresh float64 NumPy array (a copy, never a view of a device buffer)."""
    import jax

    return np.array(np.asarray(jax.device_get(a)), dtype=np.float64, copy=True)


def jax_with_vjp(forward: Callable, affine: bool, grad: bool, jit: bool = True) -> Callable:
    """jax.jit (or, jit=False, the plain eager function) of step(x, dy, params, stats, scalars) from
    forward(x, params, stats, scalars) -> (y, aux dict).

    With gradients, the vjp is taken of `forward` itself (training-mode forward in training phases, so the batch
    statistics depend on x) w.r.t. x and, when affine, params['scale'] and params['bias']. Eagerly, JAX dispatches
    every primitive on its own (each compiled and cached by itself), so nothing is fused across operations.
    """
    import jax

    def step(x: Any, dy: Any, params: Any, stats: Any, scalars: Any) -> dict:
        if not grad:
            y, aux = forward(x, params, stats, scalars)
            return {"y": y, **aux}
        if affine:
            y, pullback, aux = jax.vjp(lambda x_, p_: forward(x_, p_, stats, scalars), x, params, has_aux=True)
            dx, dp = pullback(dy)
            return {"y": y, **aux, "dx": dx, "dgamma": dp["scale"], "dbeta": dp["bias"]}
        y, pullback, aux = jax.vjp(lambda x_: forward(x_, params, stats, scalars), x, has_aux=True)
        (dx,) = pullback(dy)
        return {"y": y, **aux, "dx": dx}

    return jax.jit(step) if jit else step


def jax_linen_forward(case: dict, use_batch: bool, use_fast_variance: Any) -> Callable:
    """forward() of flax.linen.BatchNorm applied with Module.apply (mutable batch_stats when it uses batch ones)."""
    import flax.linen as nn

    kwargs = {} if use_fast_variance is None else {"use_fast_variance": use_fast_variance}
    module = nn.BatchNorm(axis=-1 if case["layout"] == "channels_last" else 1,
                          momentum=1.0 - case["momentum"],  # Flax weights the OLD running value
                          epsilon=case["eps"], dtype=jax_dtype(case["dtype"]), param_dtype=jax_dtype(case["param_dtype"]),
                          use_bias=case["affine"], use_scale=case["affine"], **kwargs)
    affine = case["affine"]

    def forward(x: Any, params: Any, stats: Any, scalars: Any) -> tuple:
        variables = {"params": params, "batch_stats": stats} if affine else {"batch_stats": stats}
        if use_batch:
            y, updated = module.apply(variables, x, use_running_average=False, mutable=["batch_stats"])
            return y, {"stats": updated["batch_stats"]}
        return module.apply(variables, x, use_running_average=True), {"stats": stats}

    return forward


def jax_nnx_forward(case: dict, use_batch: bool) -> Callable:
    """forward() of flax.nnx.BatchNorm: nnx.split once, nnx.merge inside the jitted step, BatchStat read back."""
    import jax
    from flax import nnx

    module = nnx.BatchNorm(case["shape"][1], axis=-1 if case["layout"] == "channels_last" else 1,
                           momentum=1.0 - case["momentum"],  # Flax weights the OLD running value
                           epsilon=case["eps"], dtype=jax_dtype(case["dtype"]), param_dtype=jax_dtype(case["param_dtype"]),
                           use_bias=case["affine"], use_scale=case["affine"], rngs=nnx.Rngs(0))
    graphdef, params_t, stats_t = nnx.split(module, nnx.Param, nnx.BatchStat)
    # rebuild the Param/BatchStat states from plain dicts of arrays (leaf order of the template states)
    layout = [(jax.tree_util.tree_structure(t), [path[0].key for path, _ in jax.tree_util.tree_flatten_with_path(t)[0]])
              for t in (params_t, stats_t)]

    def state(i: int, values: dict) -> Any:
        treedef, keys = layout[i]
        return jax.tree_util.tree_unflatten(treedef, [values[k] for k in keys])

    def forward(x: Any, params: Any, stats: Any, scalars: Any) -> tuple:
        m = nnx.merge(graphdef, state(0, params), state(1, stats))
        y = m(x, use_running_average=not use_batch)
        return y, {"stats": {"mean": m.mean[...], "var": m.var[...]}}

    return forward


def jax_jit_forward(case: dict, use_batch: bool, update: bool) -> Callable:
    """forward() of a two-pass BN in jax.numpy/jax.lax with PyTorch's running-statistic conventions."""
    import jax.numpy as jnp
    from jax import lax

    cdt = jax_dtype("float64" if case["dtype"] == "float64" else "float32")
    xdt, pdt = jax_dtype(case["dtype"]), jax_dtype(case["param_dtype"])
    affine, update = case["affine"], update and case["track_running_stats"]
    rank = len(case["shape"])
    ch = rank - 1 if case["layout"] == "channels_last" else 1
    axes = tuple(i for i in range(rank) if i != ch)

    def bcast(v: Any) -> Any:  # (C,) -> broadcastable against x
        return jnp.expand_dims(v, axes)

    def forward(x: Any, params: Any, stats: Any, scalars: Any) -> tuple:
        eps, momentum = scalars["eps"], scalars["momentum"]  # the new-statistic momentum, as PyTorch
        xc = x.astype(cdt)
        aux: dict = {}
        if use_batch:
            mean = jnp.mean(xc, axis=axes)
            var = jnp.mean(jnp.square(xc - bcast(mean)), axis=axes)
            invstd = lax.rsqrt(var + eps)
            n = xc.size // xc.shape[ch]
            var_u = var * (n / (n - 1) if n > 1 else float("inf"))  # n = 1: 0 * inf = NaN, undefined
            centre = mean
            aux.update(batch_mean=mean, batch_var=var, batch_var_unbiased=var_u, batch_invstd=invstd)
            if update:
                rm, rv = stats["mean"].astype(cdt), stats["var"].astype(cdt)
                aux["stats"] = {"mean": ((1 - momentum) * rm + momentum * mean).astype(pdt),
                                "var": ((1 - momentum) * rv + momentum * var_u).astype(pdt)}
        else:
            centre = stats["mean"].astype(cdt)
            invstd = lax.rsqrt(stats["var"].astype(cdt) + eps)
        y = (xc - bcast(centre)) * bcast(invstd)
        if affine:
            y = y * bcast(params["scale"].astype(cdt)) + bcast(params["bias"].astype(cdt))
        return y.astype(xdt), aux

    return forward


def jax_step_key(api: str, case: dict, use_batch: bool, update: bool) -> tuple:
    """The static configuration of one jitted step (shapes are left to jax.jit's own cache)."""
    c = case
    if api == "linen":  # the module bakes eps and momentum in; Flax updates running statistics whenever it uses batch ones
        return (api, c["layout"], c["dtype"], c["param_dtype"], c["eps"], c["momentum"], c["affine"], use_batch, c["grad"])
    if api == "nnx":
        return (api, c["shape"][1], c["layout"], c["dtype"], c["param_dtype"], c["eps"], c["momentum"], c["affine"],
                use_batch, c["grad"])
    return (api, len(c["shape"]), c["layout"], c["dtype"], c["param_dtype"], c["affine"], c["track_running_stats"],
            use_batch, update and c["track_running_stats"], c["grad"])


def jax_bn(case: dict, inputs: dict, phases: list, device: str, cache: dict, api: str = "linen",
           use_fast_variance: Any = None, jit: bool = True) -> dict:
    """Every phase of `case` through one jitted step per phase kind, carrying the running statistics it returns.

    api: 'linen' (flax.linen.BatchNorm; use_fast_variance None leaves Flax's default, True), 'nnx'
    (flax.nnx.BatchNorm) or 'jit' (BN in jax.numpy/jax.lax, which also exposes its batch statistics).
    jit=False runs the same step eagerly, outside jax.jit (op by op).
    """
    jax_enable_x64()
    import jax

    dev = jax_device(device)
    tracked, C, pd = case["track_running_stats"], case["shape"][1], case["param_dtype"]
    out = {}
    with jax.default_device(dev):
        params, stats, scalars = {}, {}, {}
        if case["affine"]:
            params = {"scale": jax_put(inputs["gamma"], pd, dev), "bias": jax_put(inputs["beta"], pd, dev)}
        if api == "jit":
            if tracked:
                stats = {"mean": jax_put(inputs["running_mean"], pd, dev), "var": jax_put(inputs["running_var"], pd, dev)}
            cdt = "float64" if case["dtype"] == "float64" else "float32"
            scalars = {"eps": jax_put(np.float64(case["eps"]), cdt, dev),
                       "momentum": jax_put(np.float64(case["momentum"]), cdt, dev)}
        else:
            # Flax keeps running statistics in float32 (force_float32_reductions), float64 for float64 parameters,
            # and always has the collection: without running statistics it starts as Flax's initialisers do
            # (zeros, ones) and is never reported
            sdt = "float64" if pd == "float64" else "float32"
            rm, rv = (inputs["running_mean"], inputs["running_var"]) if tracked else (np.zeros(C), np.ones(C))
            stats = {"mean": jax_put(rm, sdt, dev), "var": jax_put(rv, sdt, dev)}
        for phase in phases:
            training = phase != "eval"
            use_batch = training or not tracked
            key = jax_step_key(api, case, use_batch, training) + (("jit",) if jit else ("eager",))
            if key not in cache:
                if api == "linen":
                    forward = jax_linen_forward(case, use_batch, use_fast_variance)
                elif api == "nnx":
                    forward = jax_nnx_forward(case, use_batch)
                else:
                    forward = jax_jit_forward(case, use_batch, training)
                cache[key] = jax_with_vjp(forward, case["affine"], case["grad"], jit)
            x = jax_put(inputs[phase + ".x"], case["dtype"], dev)
            dy = jax_put(inputs[phase + ".dy"], case["dtype"], dev) if case["grad"] else None
            res = cache[key](x, dy, params, stats, scalars)
            out[phase + ".y"] = jax_numpy(res["y"])
            for q in ("batch_mean", "batch_var", "batch_var_unbiased", "batch_invstd"):  # jax.jit exposes them
                if q in res:
                    out[phase + "." + q] = jax_numpy(res[q])
            if training and tracked:
                stats = res["stats"]
                out[phase + ".running_mean"], out[phase + ".running_var"] = jax_numpy(stats["mean"]), jax_numpy(stats["var"])
            if case["grad"]:
                out[phase + ".dx"] = jax_numpy(res["dx"])
                if case["affine"]:
                    out[phase + ".dgamma"], out[phase + ".dbeta"] = jax_numpy(res["dgamma"]), jax_numpy(res["dbeta"])
    return out
