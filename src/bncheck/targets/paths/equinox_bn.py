"""equinox's BN path: equinox.nn.BatchNorm (mode "ema" or "batch") with its State, vmapped over the batch axis
as equinox requires (axis_name), under equinox.filter_jit, gradients by jax.vjp.

The case's running statistics are loaded into the layer's state as a checkpoint would (mode "ema": the running
pair, with the first-call flag cleared so that they are used; mode "batch": the hidden pair, with the step counter
at 0, what equinox's inference then uses unchanged); the state is carried from phase to phase. Without running
statistics every phase starts from a fresh state (make_with_state) and normalises with batch statistics.

A kernel-path module: the adapter (bncheck.targets.equinox_targets) calls `equinox_bn` in the equinox worker, and a
reproduction script embeds this file verbatim and calls the same function. So it imports no bncheck module and
imports jax and equinox only inside its functions; a case is the plain dictionary of its canonical JSON. x64 is
switched on before the first array is created, so float64 cases really run in float64.
"""
from functools import partial
from typing import Any, Callable

import numpy as np


class PathUnsupported(Exception):
    """This process cannot run the case (the adapter records it as unsupported, with this reason)."""


def equinox_enable_x64() -> None:
    """Switch on 64-bit arrays (idempotent); must happen before any float64 array is created."""
    import jax

    if not jax.config.read("jax_enable_x64"):
        jax.config.update("jax_enable_x64", True)


def equinox_device(device: str) -> Any:
    """The jax.Device a device name refers to ('cuda' is the first GPU; unverified without one)."""
    import jax

    if device == "cuda":
        try:
            return jax.devices("gpu")[0]
        except RuntimeError:
            raise PathUnsupported("jax sees no GPU (jax.devices('gpu') is empty)") from None
    return jax.devices("cpu")[0]


def equinox_put(a: np.ndarray, dtype: str, device: Any) -> Any:
    """NumPy transport array -> a jax array of `dtype` on `device` (exact: the values are representable)."""
    import jax
    import jax.numpy as jnp

    return jax.device_put(np.array(a, dtype=np.dtype(getattr(jnp, dtype))), device)


def equinox_numpy(a: Any) -> np.ndarray:
    """jax array -> a fresh float64 NumPy array."""
    import jax

    return np.array(np.asarray(jax.device_get(a)), dtype=np.float64, copy=True)


def equinox_layer(case: dict, mode: str) -> tuple:
    """(layer, fresh state) of equinox.nn.BatchNorm configured as the case says, from make_with_state."""
    import equinox as eqx
    import jax.numpy as jnp

    return eqx.nn.make_with_state(eqx.nn.BatchNorm)(
        case["shape"][1], axis_name="batch", eps=case["eps"], channelwise_affine=case["affine"],
        momentum=1.0 - case["momentum"],  # equinox weights the OLD running value
        mode=mode, dtype=getattr(jnp, case["param_dtype"]))


def equinox_clone(state: Any) -> Any:
    """A clone of a State (a State is used once; equinox's own recipe for reusing one: flatten, unflatten)."""
    import jax

    leaves, treedef = jax.tree_util.tree_flatten(state)
    return jax.tree_util.tree_unflatten(treedef, leaves)


def equinox_step(case: dict, layer: Any, inference: bool) -> Callable:
    """filter_jit of step(x, dy, weight, bias, state) -> {y, state, dx, dgamma, dbeta}: the layer vmapped over the
    batch axis (channels-last input moved to channels-first first, as equinox layers take (C, ...) per example)."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    last, affine, grad = case["layout"] == "channels_last", case["affine"], case["grad"]

    def forward(x: Any, weight: Any, bias: Any, state: Any) -> tuple:
        model = eqx.tree_at(lambda m: (m.weight, m.bias), layer, (weight, bias)) if affine else layer
        xc = jnp.moveaxis(x, -1, 1) if last else x
        y, new_state = jax.vmap(partial(model, inference=inference), axis_name="batch", in_axes=(0, None),
                                out_axes=(0, None))(xc, state)
        return (jnp.moveaxis(y, 1, -1) if last else y), new_state

    def step(x: Any, dy: Any, weight: Any, bias: Any, state: Any) -> dict:
        if not grad:
            y, new_state = forward(x, weight, bias, state)
            return {"y": y, "state": new_state}
        # y takes the promoted dtype of x and the parameters (float32 for half x with float32 parameters): the
        # cotangent is dy in that dtype, as a loss computed from y would give it (exact: dy is representable)
        if affine:
            y, pullback, new_state = jax.vjp(lambda x_, w_, b_: forward(x_, w_, b_, state), x, weight, bias, has_aux=True)
            dx, dw, db = pullback(dy.astype(y.dtype))
            return {"y": y, "state": new_state, "dx": dx, "dgamma": dw, "dbeta": db}
        y, pullback, new_state = jax.vjp(lambda x_: forward(x_, None, None, state), x, has_aux=True)
        (dx,) = pullback(dy.astype(y.dtype))
        return {"y": y, "state": new_state, "dx": dx}

    return eqx.filter_jit(step)


def equinox_bn(case: dict, inputs: dict, phases: list, device: str, cache: dict, mode: str = "ema") -> dict:
    """Every phase of `case` through equinox.nn.BatchNorm(mode=mode): y, the state's running pair after each
    training step (mode 'batch': the hidden pair it stores), and with gradients dx, dgamma, dbeta."""
    equinox_enable_x64()
    import jax
    import jax.numpy as jnp

    dev = equinox_device(device)
    tracked, pd, affine = case["track_running_stats"], case["param_dtype"], case["affine"]
    # the layer, its fresh state and its steps, per static configuration (shapes are left to jax.jit's cache)
    key = ("equinox_bn", mode, device, len(case["shape"]), case["shape"][1], case["layout"], case["dtype"], pd,
           case["eps"], case["momentum"], affine, case["grad"])
    out = {}
    with jax.default_device(dev):
        if key not in cache:
            layer, fresh = equinox_layer(case, mode)
            cache[key] = (layer, fresh, {False: equinox_step(case, layer, False), True: equinox_step(case, layer, True)})
        layer, fresh, steps = cache[key]
        weight = equinox_put(inputs["gamma"], pd, dev) if affine else None
        bias = equinox_put(inputs["beta"], pd, dev) if affine else None
        state = equinox_clone(fresh)
        if tracked:  # load the case's running statistics as a checkpoint would
            pair = (equinox_put(inputs["running_mean"], pd, dev), equinox_put(inputs["running_var"], pd, dev))
            if mode == "ema":
                state = state.set(layer.ema_state_index, pair).set(layer.ema_first_time_index, jnp.array(False))
            else:
                state = state.set(layer.batch_state_index, pair)
        for phase in phases:
            training = phase != "eval"
            x = equinox_put(inputs[phase + ".x"], case["dtype"], dev)
            dy = equinox_put(inputs[phase + ".dy"], case["dtype"], dev) if case["grad"] else None
            # without running statistics: a fresh state each phase, and batch statistics in evaluation too
            res = steps[not training and tracked](x, dy, weight, bias, state if tracked else equinox_clone(fresh))
            out[phase + ".y"] = equinox_numpy(res["y"])
            if training and tracked:
                state = res["state"]
                index = layer.ema_state_index if mode == "ema" else layer.batch_state_index
                mean, var = state.get(index)
                out[phase + ".running_mean"], out[phase + ".running_var"] = equinox_numpy(mean), equinox_numpy(var)
            if case["grad"]:
                out[phase + ".dx"] = equinox_numpy(res["dx"])
                if affine:
                    out[phase + ".dgamma"], out[phase + ".dbeta"] = equinox_numpy(res["dgamma"]), equinox_numpy(res["dbeta"])
    return out
