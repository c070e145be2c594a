"""Kernel paths in the results: targets grouped by framework and path kind, and conversion findings annotated with
their source path and whether it agrees on the finding's case."""

from __future__ import annotations

from typing import Any

from ..targets.base import CONVERSION_KINDS, PATH_KINDS

# a family's framework group in the report: its name's first component, ONNX Runtime shown with ONNX
GROUP_ALIASES = {"ort": "onnx"}


def framework_group(target: dict[str, Any]) -> str:
    """'torch' for torch.nn@cpu, torch.compile@cpu and torch.onnx.export+ort@cpu; 'onnx' for ort.* and onnx.*."""
    head = str(target.get("family") or target["name"]).split("@")[0].split(".")[0]
    return GROUP_ALIASES.get(head, head)


def path_fields(info: dict[str, Any]) -> dict[str, Any]:
    """A target's typed path fields from its stored info ('eager' and no source for targets stored before them)."""
    return {"path_kind": info.get("path_kind") or "eager", "source_family": info.get("source_family")}


def matrix_order(target: dict[str, Any]) -> tuple[str, int, str]:
    """Sort key of a target row: framework group, then path kind in PATH_KINDS order, then name."""
    kind = target.get("path_kind") or "eager"
    return framework_group(target), PATH_KINDS.index(kind) if kind in PATH_KINDS else len(PATH_KINDS), target["name"]


def source_target(target: dict[str, Any]) -> str | None:
    """The name of the target an exported/converted target's model comes from, on the same device."""
    if target.get("path_kind") not in CONVERSION_KINDS or not target.get("source_family"):
        return None
    return f"{target['source_family']}@{target['device']}"


def annotate_conversions(findings: list[dict[str, Any]], executions: list[dict[str, Any]],
                         targets: list[dict[str, Any]]) -> None:
    """Give every finding a `conversion` record: None for a target that is not a conversion, else its source path
    and how the source path did on the finding's worst case: 'agrees' (the conversion changed BN), 'deviates'
    (the source path computes it differently too), or the source's status there ('unsupported', 'error', ...,
    'not run')."""
    by_name = {t["name"]: t for t in targets}
    outcome = {(e["case_id"], e["target"]): e for e in executions}
    for f in findings:
        t = by_name.get(f["target"])
        source = source_target(t) if t else None
        if source is None:
            f["conversion"] = None
            continue
        e = outcome.get((f["worst"]["case_id"], source))
        if e is None:
            status = "not run"
        elif e["status"] != "ok":
            status = e["status"]
        else:
            status = "deviates" if e["deviations"] else "agrees"
        f["conversion"] = {"kind": t["path_kind"], "source": source, "source_on_case": status,
                           "case_id": f["worst"]["case_id"]}
