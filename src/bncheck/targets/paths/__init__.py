"""Kernel-path modules: plain code (no bncheck import, the framework imported inside functions) that each
adapter calls and each reproduction script embeds verbatim; see bncheck.targets.kernel."""
