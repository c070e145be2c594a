"""Fuzzing campaigns (`bncheck fuzz`): generated cases in batches through api.run until a time or case budget is spent.

    from bncheck import api, fuzz

    result = fuzz.fuzz(fuzz.FuzzOptions(time=120, seed=1, run=api.RunOptions(targets="torch.nn@cpu")), out="fuzz")
    print(result.status, [s["signature"] for s in result.document["findings"]])
    raise SystemExit(fuzz.exit_status(result))

A campaign is a loop over the public API: batch b draws its cases from PCG64([seed, b]) (generate.fuzz_case, one arm
per case: a value regime or a hazard of the catalogue), runs them with `api.run` in OUT/batch (no shrinking, no
scripts), folds the batch's results into the campaign state OUT/fuzz.json and deletes the batch folder. Root-cause
signatures are the ones a run has: a finding's `signature` (diagnose.signature: family, first quantity, hypothesis,
regime) and, for error/crash/timeout executions, gate.execution_signature. The first execution of each signature is
kept in full, with its case; later ones only add to the signature's counts (and replace its worst case when worse).

Steering: arm a has weight 1 + BOOST x recent(a), where recent(a) is the number of new signatures whose first case
came from arm a, decayed by DECAY after every batch (recent <- DECAY x recent + new in this batch); each case's arm is
drawn with probability proportional to the weights, fixed for the whole batch.

Budgets: `time` (seconds) and `max_cases` are totals over every session of the campaign. Batch b has
min(max_batch, FIRST_BATCH x 2**b) cases, cut to what the time left fits by the measured seconds per case and per
batch; the last min(shrink_time, time / 5) seconds shrink the first case of each new finding signature (api.run on
those cases with shrinking on, in OUT/shrink): half of them for shrinking, half for running as many first cases as the
measured seconds per case allow (suspected bugs and critical ones first; the others wait for a resumed session). With the same seed, targets and `max_cases` and no time
limit, a campaign draws the same cases (as long as the targets answer the same); a time limit cuts the last batch.

Signals: SIGINT or SIGTERM between batches stops before the next one; during a batch, api.run stops it and the batch
stays pending in OUT/batch. Either way the state and the reports are written, the result's status is
`interrupted` and its signal set (exit status 128 + the signal). `resume(OUT)` continues the campaign in
OUT: a pending batch is completed with api.resume (or run again from its seed when its folder is unusable), then
generation goes on where it stopped, with the stored seed, targets and options.

The campaign's results.json has the shape of a run's (gate, baseline, diff and junit read it): every signature's
finding, the causes, the cases referenced (first, worst and shrunk case of each signature), only the kept executions,
and the campaign's totals; summary["fuzz"] adds the arms, batches and signatures with their first case.
"""

from __future__ import annotations

import copy
import json
import shutil
import signal
import threading
import time
import uuid
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from . import api
from .cases import Case, case_from_dict
from .files import write_atomic
from .gate import EXECUTION_CLASSES, execution_signature
from .generate import FUZZ_ARMS, fuzz_case
from .outdir import OutDirError, OutputLock, prepare
from .results import STATUSES, parse_float
from .severity import SEVERITIES, worst_severity

STATE = "fuzz.json"
STATE_SCHEMA = "bncheck.fuzz"
STATE_VERSION = 1
WORK, SHRINK_WORK = "batch", "shrink"
FIRST_BATCH = 8
MAX_BATCH = 256
DECAY = 0.5
BOOST = 4.0
MAX_CASES_PER_SIGNATURE = 20  # case ids a signature lists (the first ones), as a baseline entry keeps
SHRINK_CASE_COST = 3.0  # a first case in the shrinking run costs this many batch cases (it deviates: diagnosis, pages)
CLASS_ORDER = ("suspected-bug", "precision", "precision-outlier", "out-of-range", "convention")


@dataclass(frozen=True)
class FuzzOptions:
    """A campaign's budgets, seed and the options of its runs (`run.shrink` and `run.shrink_time` shrink the first case
    of each signature at the end of a session; every other RunOptions field passes to each batch's api.run)."""

    time: float | None = None  # seconds, over every session (None: no time limit)
    max_cases: int | None = None  # cases, over every session (None: no limit)
    seed: int = 0
    max_batch: int = MAX_BATCH
    run: api.RunOptions = api.RunOptions(shrink_time=30.0)


@dataclass
class FuzzResult:
    """A campaign after one session: its folder, status, results document and the signatures this session found."""

    campaign_id: str
    out: Path
    status: str  # 'complete' (a budget is spent) or 'interrupted'
    document: dict[str, Any]  # results.json, as written
    new_signatures: list[str] = field(default_factory=list)
    signal: int | None = None
    resumed: bool = False

    @property
    def findings(self) -> list[dict[str, Any]]:
        """results.json's findings: one per finding signature."""
        return self.document["findings"]


def exit_status(result: FuzzResult) -> int:
    """0 no signature; 1 findings or error/crash/timeout signatures; 128 + the signal when interrupted."""
    if result.signal:
        return 128 + result.signal
    return api.EXIT_FINDINGS if result.document["summary"]["fuzz"]["signatures"] else api.EXIT_OK


def _quiet(_message: str) -> None:
    """The default log: say nothing."""


# ---- state --------------------------------------------------------------------------------------
def _new_state(options: FuzzOptions, command: str) -> dict[str, Any]:
    """A campaign that has run nothing yet."""
    return {"schema": STATE_SCHEMA, "schema_version": STATE_VERSION,
            "campaign_id": "fuzz-" + time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6],
            "command": command, "created": time.time(), "seed": options.seed,
            "budget": {"time_s": options.time, "max_cases": options.max_cases},
            "options": {**run_options_json(options.run), "max_batch": options.max_batch},
            "status": "running", "elapsed_s": 0.0, "sessions": [], "batches": 0, "cases": 0, "executions": 0,
            "deviating_executions": 0, "by_status": {s: 0 for s in STATUSES}, "by_target": {}, "broken_targets": [],
            "estimate": {}, "arms": {a: {"cases": 0, "new": 0, "recent": 0.0} for a in FUZZ_ARMS},
            "signatures": {}, "order": [], "cases_kept": {}, "executions_kept": [], "targets": [], "manifest": {},
            "pending": None}


def run_options_json(options: api.RunOptions) -> dict[str, Any]:
    """Every field of RunOptions as JSON (so that fields it gains, an executor say, are kept for --resume too)."""
    return {f.name: list(v) if isinstance(v := getattr(options, f.name), tuple) else v for f in fields(options)}


def run_options_from_json(d: dict[str, Any]) -> api.RunOptions:
    """RunOptions from run_options_json's object; fields this RunOptions does not have are ignored."""
    known = {f.name: f for f in fields(api.RunOptions)}
    return api.RunOptions(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in known})


def load_state(out: Path) -> dict[str, Any]:
    """The campaign state in OUT (InputError naming the fix when there is none or it is not one)."""
    path = out / STATE
    if not path.is_file():
        raise api.InputError(f"--resume: no fuzzing campaign in {out} ({path} is missing; start one with "
                             f"'bncheck fuzz --time 1h --out {out}')")
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise api.InputError(f"{path}: not a readable campaign state ({getattr(e, 'msg', e)}); start a new campaign "
                             "with another --out") from None
    if not isinstance(state, dict) or state.get("schema") != STATE_SCHEMA or state.get("schema_version") != STATE_VERSION:
        raise api.InputError(f"{path}: not a bncheck fuzzing campaign of version {STATE_VERSION}; start a new campaign "
                             "with another --out")
    return state


def _save(out: Path, state: dict[str, Any]) -> None:
    write_atomic(out / STATE, json.dumps(state, indent=1, allow_nan=False) + "\n")


# ---- batches ------------------------------------------------------------------------------------
def arm_weights(state: dict[str, Any]) -> dict[str, float]:
    """The steering rule: arm -> 1 + BOOST x its decayed count of recent new signatures."""
    return {a: 1.0 + BOOST * float(state["arms"].get(a, {}).get("recent", 0.0)) for a in FUZZ_ARMS}


def batch_size(batch: int, max_batch: int) -> int:
    """The planned size of batch `batch` (0-based): FIRST_BATCH doubling up to max_batch."""
    return max(1, min(max_batch, FIRST_BATCH * 2 ** min(batch, 30)))


def batch_cases(seed: int, batch: int, n: int, weights: dict[str, float]) -> list[tuple[Case, str]]:
    """The first `n` (case, arm) of batch `batch`: arms drawn by weight, cases by generate.fuzz_case, one PCG64 stream
    per (seed, batch), so that fewer cases are a prefix of more; a repeated case id is dropped."""
    rng = np.random.Generator(np.random.PCG64([seed, batch]))
    arms = list(weights)
    w = np.array([weights[a] for a in arms], dtype=float)
    p = w / w.sum()
    out: list[tuple[Case, str]] = []
    seen: set[str] = set()
    for _ in range(n):
        arm = arms[int(rng.choice(len(arms), p=p))]
        case = fuzz_case(rng, arm, f"fuzz/{seed}/{batch}")
        if case.case_id not in seen:
            seen.add(case.case_id)
            out.append((case, arm))
    return out


def _case_entry(doc: dict[str, Any], case_id: str) -> dict[str, Any] | None:
    c = doc["cases"].get(case_id)
    return copy.deepcopy(c) if c is not None else None


def _ratio(r: Any) -> float:
    try:
        return parse_float(r) if r is not None else -1.0
    except ValueError:
        return -1.0


def fold(state: dict[str, Any], doc: dict[str, Any], arms: dict[str, str], batch: int, elapsed: float) -> list[str]:
    """Add one batch's results document to the campaign state; returns the signatures it started."""
    s = doc["summary"]
    state["batches"] = max(state["batches"], batch + 1)
    state["cases"] += s["cases"]
    state["executions"] += s["executions"]
    state["deviating_executions"] += s["deviating_executions"]
    for k, v in s["by_status"].items():
        state["by_status"][k] = state["by_status"].get(k, 0) + v
    for t, counts in s["by_target"].items():
        mine = state["by_target"].setdefault(t, {})
        for k, v in counts.items():
            mine[k] = mine.get(k, 0) + v
    state["broken_targets"] = sorted(set(state["broken_targets"]) | set(s.get("broken_targets", [])))
    state["targets"] = doc["targets"]
    if not state["manifest"]:
        state["manifest"] = doc["run"]["manifest"]
    position = {cid: i for i, cid in enumerate(doc["cases"])}
    for cid, arm in arms.items():
        state["arms"][arm]["cases"] += 1
    execs = {(e["case_id"], e["target"]): e for e in doc["executions"]}
    new: list[str] = []
    found = {"batch": batch, "after_cases": state["cases"], "elapsed_s": round(elapsed, 3)}

    def keep(case_ids: list[str]) -> None:
        for cid in case_ids:
            entry = _case_entry(doc, cid)
            if entry is not None:
                state["cases_kept"].setdefault(cid, entry)

    kept = {(e["case_id"], e["target"]) for e in state["executions_kept"]}

    def keep_execution(e: dict[str, Any]) -> None:  # one execution can start two signatures (a peer outlier too)
        if (e["case_id"], e["target"]) not in kept:
            kept.add((e["case_id"], e["target"]))
            state["executions_kept"].append(copy.deepcopy(e))

    for f in doc["findings"]:
        sig = f["signature"]
        first = min(f["cases"], key=lambda c: position.get(c, 1 << 30))
        rec = state["signatures"].get(sig)
        if rec is None:
            g = copy.deepcopy(f)
            g["cases"] = list(dict.fromkeys(f["cases"]))[:MAX_CASES_PER_SIGNATURE]
            g["minimal_case"] = first
            g.pop("shrink", None)
            g["repro"] = None
            g.pop("case_file", None)
            e = execs.get((first, f["target"]))
            rec = state["signatures"][sig] = {"kind": "finding", "finding": g, "first_case": first,
                                              "arm": arms.get(first, ""), "found": found, "count": 0, "shrunk": False}
            state["order"].append(sig)
            if e is not None:
                keep_execution(e)
            keep([first, f["worst"]["case_id"]])
            new.append(sig)
        else:
            g = rec["finding"]
            g["count"] += f["count"]
            g["cases"] = list(dict.fromkeys(g["cases"] + f["cases"]))[:MAX_CASES_PER_SIGNATURE]
            g["channels"] = sorted(set(g["channels"]) | set(f["channels"]))
            if worst_severity([g["severity"], f["severity"]]) != g["severity"]:
                g["severity"], g["severity_reasons"] = f["severity"], f.get("severity_reasons", [])
            if CLASS_ORDER.index(f["classification"]) < CLASS_ORDER.index(g["classification"]):
                g["classification"] = f["classification"]
            if _ratio(f["worst"].get("ratio")) > _ratio(g["worst"].get("ratio")):
                g["worst"] = copy.deepcopy(f["worst"])
                keep([f["worst"]["case_id"]])
        rec["count"] += f["count"]
    for e in doc["executions"]:
        if e["status"] not in EXECUTION_CLASSES:
            continue
        sig = execution_signature(e["target"], e["status"], e["message"])
        rec = state["signatures"].get(sig)
        if rec is None:
            rec = state["signatures"][sig] = {"kind": "execution", "finding": None, "first_case": e["case_id"],
                                              "arm": arms.get(e["case_id"], ""), "found": found, "count": 0,
                                              "shrunk": True, "target": e["target"], "status": e["status"],
                                              "message": (e["message"] or "").strip().splitlines()[0][:300]
                                              if (e["message"] or "").strip() else e["status"]}
            state["order"].append(sig)
            keep_execution(e)
            keep([e["case_id"]])
            new.append(sig)
        rec["count"] += 1
    by_arm: dict[str, int] = {}
    for sig in new:
        arm = state["signatures"][sig]["arm"]
        if arm:
            by_arm[arm] = by_arm.get(arm, 0) + 1
    for arm, a in state["arms"].items():
        a["new"] += by_arm.get(arm, 0)
        a["recent"] = round(DECAY * a["recent"] + by_arm.get(arm, 0), 6)
    return new


# ---- the results document -----------------------------------------------------------------------
def campaign_results(state: dict[str, Any]) -> dict[str, Any]:
    """The campaign's results.json (a run's shape; see the module docstring)."""
    from .report.results import finding_order, root_causes

    findings = [copy.deepcopy(state["signatures"][s]["finding"]) for s in state["order"]
                if state["signatures"][s]["kind"] == "finding"]
    findings.sort(key=finding_order)
    fuzz_sigs = []
    for sig in state["order"]:
        rec = state["signatures"][sig]
        f = rec["finding"]
        fuzz_sigs.append({"signature": sig, "kind": rec["kind"], "count": rec["count"], "first_case": rec["first_case"],
                          "arm": rec["arm"], "found": rec["found"],
                          "minimal_case": f["minimal_case"] if f else rec["first_case"],
                          "shrunk": bool(f and (f.get("shrink") or {}).get("reduced")),
                          **({"target": f["target"], "quantity": f["quantity"], "hypothesis": f["hypothesis"],
                              "classification": f["classification"], "severity": f["severity"], "regime": f["regime"]}
                             if f else {"target": rec["target"], "classification": rec["status"],
                                        "hypothesis": rec["message"]})})
    weights = arm_weights(state)
    summary = {
        "cases": state["cases"], "targets": len([t for t in state["targets"] if t.get("available")]),
        "executions": state["executions"], "by_status": {k: state["by_status"].get(k, 0) for k in STATUSES},
        "deviating_executions": state["deviating_executions"],
        "findings": {c: sum(1 for f in findings if f["classification"] == c) for c in CLASS_ORDER},
        "findings_by_severity": {v: sum(1 for f in findings if f.get("severity") == v) for v in SEVERITIES},
        "by_target": state["by_target"], "broken_targets": state["broken_targets"],
        "fuzz": {"campaign_id": state["campaign_id"], "seed": state["seed"], "budget": state["budget"],
                 "elapsed_s": round(state["elapsed_s"], 3), "batches": state["batches"],
                 "kept_executions": len(state["executions_kept"]), "pending_batch": state["pending"],
                 "steering": {"rule": "weight = 1 + boost x recent; recent <- decay x recent + new signatures per batch",
                              "boost": BOOST, "decay": DECAY},
                 "arms": {a: {**state["arms"][a], "weight": round(weights[a], 6)} for a in FUZZ_ARMS},
                 "signatures": fuzz_sigs},
    }
    run = {"run_id": state["campaign_id"], "started": state["created"],
           "finished": state["sessions"][-1]["ended"] if state["sessions"] else None, "command": state["command"],
           "sources": [f"fuzz/{state['seed']}"], "manifest": state["manifest"], "status": state["status"],
           "plugins": list(state["options"]["plugins"]), "timings_s": {"total": round(state["elapsed_s"], 4)}}
    return {"schema": "bncheck.results", "schema_version": 1, "run": run, "summary": summary, "targets": state["targets"],
            "findings": findings, "root_causes": root_causes(findings), "cases": copy.deepcopy(state["cases_kept"]),
            "executions": copy.deepcopy(state["executions_kept"])}


def write_reports(state: dict[str, Any], out: Path) -> dict[str, Any]:
    """Write the state, each finding's case file, results.json, index.html and results.xml; returns the document."""
    from .report.html import write_html
    from .report.junit import write_junit
    from .report.results import write_finding_cases, write_results

    _save(out, state)
    doc = campaign_results(state)
    write_finding_cases(doc, out)
    write_results(doc, out / "results.json")
    write_html(doc, out / "index.html")
    write_junit(doc, out / "results.xml", out)
    return doc


# ---- signals between batches --------------------------------------------------------------------
class _Flag:
    """SIGINT and SIGTERM while the campaign is between batches: the first is noted (the loop stops before the next
    batch), a second one raises KeyboardInterrupt. api.run installs its own handling during a batch."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "_Flag":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                if sig == signal.SIGINT and signal.getsignal(sig) == signal.SIG_IGN:
                    continue
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is None:
            self.received = signum
            return
        raise KeyboardInterrupt()


# ---- the campaign -------------------------------------------------------------------------------
def _check(options: FuzzOptions) -> None:
    if options.time is None and options.max_cases is None:
        raise api.InputError("give a budget: --time DURATION (e.g. 2m, 1h) or --max-cases N")
    if options.time is not None and not options.time > 0:
        raise api.InputError(f"--time must be a positive duration such as 90s, 2m or 1h, got {options.time!r}")
    if options.max_cases is not None and options.max_cases < 1:
        raise api.InputError(f"--max-cases must be at least 1, got {options.max_cases}")
    if options.max_batch < 1:
        raise api.InputError(f"--max-batch must be at least 1, got {options.max_batch}")


class _Campaign:
    """One session of a campaign: its state, folder lock, clock and the signal flag."""

    def __init__(self, out: Path, options: FuzzOptions, state: dict[str, Any], log: api.Log, resumed: bool) -> None:
        self.out, self.options, self.state, self.log, self.resumed = out, options, state, log, resumed
        self.start = time.monotonic()
        self.elapsed_before = float(state["elapsed_s"])
        self.new: list[str] = []
        self.flag = _Flag()
        self.signal: int | None = None
        self.batches_this_session = 0

    # -- time --
    def elapsed(self) -> float:
        """Seconds of the campaign so far, over every session."""
        return self.elapsed_before + time.monotonic() - self.start

    def reserve(self) -> float:
        """Seconds kept at the end of the time budget for shrinking the new signatures' first cases."""
        t, r = self.options.time, self.options.run
        return 0.0 if t is None or not (r.shrink or r.repro) else min(r.shrink_time, t / 5)

    def next_size(self) -> int:
        """The size of the next batch: planned size, cut by the cases and the time left (0: stop)."""
        st, o = self.state, self.options
        n = batch_size(st["batches"], o.max_batch)
        if o.max_cases is not None:
            n = min(n, o.max_cases - st["cases"])
        if o.time is not None:
            left = o.time - self.reserve() - self.elapsed()
            if left <= 0:
                return 0
            est = st["estimate"]
            if est.get("per_case_s"):
                n = min(n, int((left - est.get("per_batch_s", 0.0)) / est["per_case_s"]))
        return max(0, n)

    def _learn(self, result: api.RunResult, n: int, wall: float) -> None:
        """Update the seconds per batch (starting the frameworks) and per case (executing, judging and the reports,
        which grow with the batch) from one batch's phase times."""
        per_batch = float(result.timings.get("starting frameworks", 0.0))
        per_case = max(0.0, wall - per_batch) / n if n else 0.0
        est = self.state["estimate"]
        if est.get("per_case_s"):  # the slower of the last batch and the running mean: the last batch may not overrun
            per_case = max(per_case, 0.5 * (per_case + est["per_case_s"]))
            per_batch = max(per_batch, 0.5 * (per_batch + est["per_batch_s"]))
        est.update(per_case_s=round(max(per_case, 1e-4), 6), per_batch_s=round(per_batch, 4))

    def _unshrunk(self) -> list[str]:
        """Finding signatures whose first case is not shrunk yet."""
        st = self.state
        return [s for s in st["order"] if st["signatures"][s]["kind"] == "finding" and not st["signatures"][s]["shrunk"]]

    # -- phases --
    def run_batch(self, batch: int, n: int, weights: dict[str, float] | None = None) -> None:
        """Generate, run and fold batch `batch` (arms weighted by the steering rule unless `weights` are given); an
        Interrupted leaves it pending."""
        st = self.state
        weights = weights or arm_weights(st)
        pairs = batch_cases(st["seed"], batch, n, weights)
        arms = {c.case_id: a for c, a in pairs}
        st["pending"] = {"batch": batch, "cases": n, "weights": weights, "run_id": None}
        shutil.rmtree(self.out / WORK, ignore_errors=True)  # what a killed session (SIGKILL, power) left there
        t0 = time.monotonic()
        opts = replace(self.options.run, shrink=0, repro=False)
        log = self.log if self.batches_this_session == 0 else _quiet
        try:
            result = api.run([c for c, _ in pairs], out=self.out / WORK, options=opts, log=log,
                             command=f"{st['command']}  # batch {batch}")
        except api.Interrupted as e:
            st["pending"]["run_id"] = e.result.run_id if e.result is not None else None
            raise
        self._complete(result, batch, n, arms, time.monotonic() - t0)

    def _complete(self, result: api.RunResult, batch: int, n: int, arms: dict[str, str], wall: float) -> None:
        st = self.state
        self._learn(result, n, wall)
        new = fold(st, result.document, arms, batch, self.elapsed())
        st["pending"] = None
        self.new += new
        self.batches_this_session += 1
        st["elapsed_s"] = self.elapsed()
        write_reports(st, self.out)
        shutil.rmtree(self.out / WORK, ignore_errors=True)
        total = len(st["signatures"])
        self.log(f"bncheck: fuzz batch {batch}: {n} cases, {len(new)} new signatures ({total} in all), "
                 f"{st['cases']} cases in {st['elapsed_s']:.0f} s")

    def complete_pending(self) -> None:
        """Finish the batch a previous session left pending: api.resume its run, or run it again from its seed."""
        p = self.state["pending"]
        n, batch = int(p["cases"]), int(p["batch"])
        pairs = batch_cases(self.state["seed"], batch, n, p["weights"])
        arms = {c.case_id: a for c, a in pairs}
        t0 = time.monotonic()
        if p.get("run_id") and (self.out / WORK / "results.sqlite").is_file():
            self.log(f"bncheck: fuzz: completing batch {batch} (run {p['run_id']})")
            try:
                result = api.resume(p["run_id"], out=self.out / WORK, log=self.log)
            except api.InputError as e:
                self.log(f"bncheck: fuzz: batch {batch} cannot be resumed ({e}); running it again")
                result = None
            if result is not None:
                self._complete(result, batch, n, arms, time.monotonic() - t0)
                return
        shutil.rmtree(self.out / WORK, ignore_errors=True)
        self.run_batch(batch, n, p["weights"])

    def shrink_new(self) -> None:
        """Shrink the first case of every finding signature not shrunk yet (one api.run, shrinking on), and copy its
        reproduction scripts."""
        st, r = self.state, self.options.run
        from .report.results import finding_order

        todo = sorted(self._unshrunk(), key=lambda s: finding_order(st["signatures"][s]["finding"]))  # bugs first
        if not todo or not (r.shrink or r.repro):
            return
        seconds, limit = r.shrink_time, len(todo)
        if self.options.time is not None and self.options.time - self.elapsed() < st["estimate"].get("per_batch_s", 0.0):
            for s in todo:  # the budget is spent (a resumed session given less time than was used): shrink later
                g = st["signatures"][s]["finding"]
                g.setdefault("shrink", {"attempts": 0, "reduced": False, "from_case": g["minimal_case"],
                                        "skipped": "no time left in this session (a resumed session shrinks it)"})
            return
        if self.options.time is not None:  # the reserve: half shrinking, half running the first cases and the reports
            half = max(1.0, (self.options.time - self.elapsed()) / 2)
            seconds = min(seconds, half)
            est = st["estimate"]
            limit = max(1, int((half - est.get("per_batch_s", 0.0)) / (SHRINK_CASE_COST * est.get("per_case_s", 0.01))))
        cases, seen = [], set()
        for s in todo:
            cid = st["signatures"][s]["first_case"]
            if cid not in seen and len(seen) < limit:
                seen.add(cid)
                entry = st["cases_kept"][cid]
                cases.append(case_from_dict({k: v for k, v in entry.items() if k not in ("description", "metrics")}))
        skipped = [s for s in todo if st["signatures"][s]["first_case"] not in seen]
        todo = [s for s in todo if st["signatures"][s]["first_case"] in seen]
        targets = ",".join(sorted({st["signatures"][s]["finding"]["target"] for s in todo}))
        self.log(f"bncheck: fuzz: shrinking the first cases of {len(todo)} signatures ({seconds:.0f} s)")
        work = self.out / SHRINK_WORK
        shutil.rmtree(work, ignore_errors=True)
        try:
            result = api.run(cases, out=work, options=replace(r, targets=targets, shrink_time=seconds), log=_quiet,
                             command=f"{st['command']}  # shrinking")
        except api.Interrupted:
            shutil.rmtree(work, ignore_errors=True)
            raise
        got = {f["signature"]: f for f in result.findings}
        (self.out / "repro").mkdir(exist_ok=True)
        for s in todo:
            g = st["signatures"][s]["finding"]
            f = got.get(s)
            if f is None:
                g["shrink"] = {"attempts": 0, "reduced": False, "from_case": g["minimal_case"],
                               "skipped": "its first case did not show this signature again when run alone"}
            else:
                g["shrink"] = {**f.get("shrink", {}), "from_case": g["minimal_case"]}
                if (f.get("shrink") or {}).get("reduced"):
                    entry = _case_entry(result.document, f["minimal_case"])
                    if entry is not None:
                        st["cases_kept"].setdefault(f["minimal_case"], entry)
                        g["minimal_case"] = f["minimal_case"]
                if f.get("repro") and (work / f["repro"]).is_file():
                    shutil.copyfile(work / f["repro"], self.out / f["repro"])
                    g["repro"] = f["repro"]
            # tried, or never shrinkable (a peer outlier): done; left out by the run's own limit: the next session's
            st["signatures"][s]["shrunk"] = bool(g["shrink"].get("attempts") or g["shrink"].get("reduced")
                                                 or f is None or g["classification"] == "precision-outlier")
        for s in skipped:  # left for the next session (bncheck fuzz --resume); until then it says why
            g = st["signatures"][s]["finding"]
            g["shrink"] = {"attempts": 0, "reduced": False, "from_case": g["minimal_case"],
                           "skipped": "no time left in this session (a resumed session shrinks it)"}
        shutil.rmtree(work, ignore_errors=True)

    def go(self) -> FuzzResult:
        """Run the session: the pending batch, batches until a budget is spent or a signal, the shrinking, the
        reports."""
        st = self.state
        st["status"] = "running"
        session = {"started": time.time(), "ended": None, "status": "running", "cases_before": st["cases"]}
        st["sessions"].append(session)
        with self.flag:
            try:
                if st["pending"] is not None:
                    self.complete_pending()
                while self.flag.received is None:
                    n = self.next_size()
                    if n <= 0:
                        break
                    self.run_batch(st["batches"], n)
                if self.flag.received is None:
                    self.shrink_new()
            except api.Interrupted as e:
                self.signal = e.signum
            except KeyboardInterrupt:  # a second signal between batches
                self.signal = self.flag.received or signal.SIGINT
            self.signal = self.signal or self.flag.received
            status = "interrupted" if self.signal else "complete"
            st["status"], st["elapsed_s"] = status, self.elapsed()
            session.update(ended=time.time(), status=status, cases=st["cases"] - session["cases_before"])
            doc = write_reports(st, self.out)
        return FuzzResult(st["campaign_id"], self.out, status, doc, list(self.new), self.signal, self.resumed)


def fuzz(options: FuzzOptions, *, out: str | Path = "fuzz", log: api.Log = _quiet, command: str | None = None) -> FuzzResult:
    """Run a new fuzzing campaign in OUT until its time or case budget is spent.

    Raises api.InputError (no or bad budget, unknown target, OUT holding a campaign or a run already) and
    api.InfrastructureError (no target available, OUT in use or unwritable); a signal ends the session with status
    'interrupted' and `signal` set."""
    out = Path(out)
    _check(options)
    api.load_plugins(options.run.plugins)
    api.check_target_patterns(options.run.targets)
    if (out / STATE).is_file():
        raise api.InputError(f"{out} holds a fuzzing campaign already: continue it with 'bncheck fuzz --resume --out "
                             f"{out}', or choose another --out")
    if (out / "results.json").is_file() or (out / "results.sqlite").is_file():
        raise api.InputError(f"{out} holds the results of a run: choose another --out for the campaign")
    command = command or _command()
    return _session(out, options, _new_state(options, command), log, command, resumed=False)


RESUMABLE = ("timeout", "shrink", "shrink_time", "memory_limit", "repro", "executor", "address", "jobs")


def resume(out: str | Path = "fuzz", *, time_s: float | None = None, max_cases: int | None = None,
           overrides: dict[str, Any] | None = None, log: api.Log = _quiet, command: str | None = None) -> FuzzResult:
    """Continue the campaign stored in OUT: its pending batch first, then more batches until its budget is spent.

    `time_s` and `max_cases`, when given, replace the campaign's totals (over all its sessions); `overrides` replaces
    run options by name (timeout, shrink, shrink_time, memory_limit, repro, executor, address, jobs); the seed and the
    targets stay."""
    out = Path(out)
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(RESUMABLE))
    if unknown:
        raise api.InputError(f"fuzz --resume: option {unknown[0]!r} cannot change (options: {', '.join(RESUMABLE)})")
    state = load_state(out)
    o = state["options"]
    if "executor" in overrides and "address" not in overrides:  # the cluster goes with the executor
        o["address"] = None
    o.update(overrides)
    budget = state["budget"]
    if time_s is not None:
        budget["time_s"] = time_s
    if max_cases is not None:
        budget["max_cases"] = max_cases
    run = run_options_from_json(o)
    options = FuzzOptions(time=budget["time_s"], max_cases=budget["max_cases"], seed=state["seed"],
                          max_batch=o["max_batch"], run=run)
    _check(options)
    api.load_plugins(run.plugins)
    return _session(out, options, state, log, command or _command(), resumed=True)


def _command() -> str:
    import shlex
    import sys

    return "bncheck " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def _session(out: Path, options: FuzzOptions, state: dict[str, Any], log: api.Log, command: str,
             resumed: bool) -> FuzzResult:
    """Lock OUT and run one session; a new campaign that stored nothing leaves no folder behind."""
    created = not out.exists() and not out.is_symlink()
    try:
        prepare(out)
        lock = OutputLock(out)
        lock.acquire(state["campaign_id"], command)
    except OutDirError as e:
        raise (api.InputError if e.status == api.EXIT_USAGE else api.InfrastructureError)(str(e)) from None
    try:
        return _Campaign(out, options, state, log, resumed).go()
    except (api.InputError, api.InfrastructureError):
        if created and not (out / STATE).is_file():
            lock.release()
            shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        lock.release()
