"""A test plugin: two frameworks whose probes each wait for the other's to start.

Both probes return only if the parent probes the two workers at the same time; probed one after another,
the first waits in vain and fails after RENDEZVOUS_S seconds. The folder to meet in is $BNCHECK_RENDEZVOUS.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from bncheck.targets import register_framework, register_target
from bncheck.targets.base import Conventions, Framework, Target

RENDEZVOUS_S = 30.0


def _meet(me: str, other: str) -> dict:
    """Say this probe started, wait for the other's, then answer as a probe does."""
    folder = Path(os.environ["BNCHECK_RENDEZVOUS"])
    (folder / me).touch()
    deadline = time.monotonic() + RENDEZVOUS_S
    while not (folder / other).exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"probe {me} waited {RENDEZVOUS_S:g} s for probe {other}: the probes ran one after another")
        time.sleep(0.02)
    return {"version": "0.0-test", "devices": ["cpu"]}


def probe_a() -> dict:
    """Framework rendezvous-a's probe."""
    return _meet("a", "b")


def probe_b() -> dict:
    """Framework rendezvous-b's probe."""
    return _meet("b", "a")


for _name in ("a", "b"):
    register_framework(Framework(f"rendezvous-{_name}", ("numpy",), "nothing to install", f"rendezvous_plugin:probe_{_name}"))

    @register_target
    class _Target(Target):
        """A target of this framework (it is never run)."""

        family = f"rendezvous.{_name}"
        framework = f"rendezvous-{_name}"
        description = "a target whose framework's probe meets the other framework's"
        conventions = Conventions(momentum="new", running_var="unbiased", quantities=("y",))

        def run(self, case, inputs):
            """Not used: the test only discovers."""
            raise NotImplementedError
