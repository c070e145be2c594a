"""The results store: one SQLite file per output directory, with a schema version, committed as results arrive."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

from .files import advice, disk_failure, not_a_database

SCHEMA_VERSION = 2  # 2: the findings table
FILENAME = "results.sqlite"

_FINDINGS = """
CREATE TABLE IF NOT EXISTS findings (
    run_id TEXT NOT NULL, signature TEXT NOT NULL, target TEXT NOT NULL, quantity TEXT NOT NULL, mode TEXT NOT NULL,
    hypothesis TEXT NOT NULL, classification TEXT NOT NULL, regime TEXT NOT NULL, count INTEGER NOT NULL,
    worst_ratio REAL, minimal_case_id TEXT NOT NULL, minimal_case TEXT NOT NULL, from_case_id TEXT NOT NULL,
    shrunk INTEGER NOT NULL, repro TEXT, case_file TEXT,
    PRIMARY KEY (run_id, signature)
);
"""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, started REAL NOT NULL, finished REAL, command TEXT NOT NULL,
    sources TEXT NOT NULL, manifest TEXT NOT NULL, status TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS targets (
    run_id TEXT NOT NULL, target TEXT NOT NULL, framework TEXT NOT NULL, device TEXT NOT NULL,
    version TEXT NOT NULL, available INTEGER NOT NULL, reason TEXT NOT NULL, info TEXT NOT NULL,
    PRIMARY KEY (run_id, target)
);
CREATE TABLE IF NOT EXISTS cases (case_id TEXT PRIMARY KEY, json TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS run_cases (
    run_id TEXT NOT NULL, position INTEGER NOT NULL, case_id TEXT NOT NULL, PRIMARY KEY (run_id, position)
);
CREATE TABLE IF NOT EXISTS executions (
    run_id TEXT NOT NULL, case_id TEXT NOT NULL, target TEXT NOT NULL, status TEXT NOT NULL,
    message TEXT NOT NULL, stderr_tail TEXT NOT NULL, elapsed REAL NOT NULL, inputs_digest TEXT NOT NULL,
    deviations INTEGER NOT NULL, worst_ratio REAL,
    PRIMARY KEY (run_id, case_id, target)
);
CREATE TABLE IF NOT EXISTS case_metrics (
    run_id TEXT NOT NULL, case_id TEXT NOT NULL, metrics TEXT NOT NULL, PRIMARY KEY (run_id, case_id)
);
CREATE TABLE IF NOT EXISTS verdicts (
    run_id TEXT NOT NULL, case_id TEXT NOT NULL, target TEXT NOT NULL, key TEXT NOT NULL,
    passed INTEGER NOT NULL, ratio REAL, detail TEXT NOT NULL,
    PRIMARY KEY (run_id, case_id, target, key)
);
CREATE TABLE IF NOT EXISTS run_events (
    run_id TEXT NOT NULL, seq INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL, event TEXT NOT NULL,
    target TEXT NOT NULL, detail TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS run_options (run_id TEXT PRIMARY KEY, options TEXT NOT NULL);
""" + _FINDINGS

# schema version -> the statements that bring a file of that version to the next one
_UPGRADES = {1: _FINDINGS}


class StoreError(Exception):
    """The results file cannot be used (wrong schema version, not a bncheck store, unwritable)."""


def _num(x: float) -> float | None:
    """SQLite REAL for a float; infinity is stored as a very large number, NaN as NULL."""
    if x != x:
        return None
    return min(x, 1e308)


class Store:
    """Runs, targets, cases, executions and verdicts in one SQLite file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.db = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            has_meta = self.db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'").fetchone()
            row = self.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() if has_meta else None
            version = int(row[0]) if row is not None and str(row[0]).isdigit() else None
            if row is not None and version not in (*_UPGRADES, SCHEMA_VERSION):
                self.db.close()  # a newer (or foreign) schema: refused before anything is written to it
                raise StoreError(f"{self.path}: schema version {row[0]}, this bncheck reads {SCHEMA_VERSION}; "
                                 "use a fresh --out directory")
            self.db.executescript(_SCHEMA)
            with self.db:
                if row is None:
                    self.db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
                while version is not None and version < SCHEMA_VERSION:  # upgrade an older file in place
                    for statement in filter(str.strip, _UPGRADES[version].split(";")):
                        self.db.execute(statement)
                    version += 1
                    self.db.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(version),))
        except sqlite3.DatabaseError as e:
            if disk_failure(e) and not not_a_database(e):  # the disk, not the file: full, read-only, failing
                raise StoreError(f"{self.path}: {e}{advice(e)}") from None
            raise StoreError(f"{self.path}: not a usable bncheck results file ({e}); choose another --out directory") from None

    def close(self) -> None:
        """Close the database."""
        self.db.close()

    # ---- writing -----------------------------------------------------------------------------
    def begin_run(self, command: str, sources: list[str], manifest: dict[str, Any]) -> str:
        """Create a run and return its id."""
        run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
        self.db.execute("INSERT INTO runs VALUES (?,?,?,?,?,?,?)",
                        (run_id, time.time(), None, command, json.dumps(sources), json.dumps(manifest), "running"))
        self.db.commit()
        return run_id

    def add_targets(self, run_id: str, rows: list[dict[str, Any]]) -> None:
        """Record the targets considered for a run (available or not)."""
        self.db.executemany(
            "INSERT OR REPLACE INTO targets VALUES (?,?,?,?,?,?,?,?)",
            [(run_id, r["name"], r["framework"], r["device"], r.get("version", ""), int(r["available"]),
              r.get("reason", ""), json.dumps(r.get("info", {}))) for r in rows],
        )
        self.db.commit()

    def add_cases(self, run_id: str, cases: list[tuple[str, str]]) -> None:
        """Record the (case_id, canonical json) of a run, in order."""
        self.db.executemany("INSERT OR IGNORE INTO cases VALUES (?,?)", cases)
        self.db.executemany("INSERT OR REPLACE INTO run_cases VALUES (?,?,?)",
                            [(run_id, i, cid) for i, (cid, _) in enumerate(cases)])
        self.db.commit()

    def add_execution(self, run_id: str, case_id: str, target: str, status: str, message: str, stderr_tail: str,
                      elapsed: float, inputs_digest: str, verdicts: list[dict[str, Any]], commit: bool = True) -> None:
        """Record one execution and its verdicts; committed at once unless `commit` is False (then by commit())."""
        deviations = sum(1 for v in verdicts if not v["passed"])
        worst = max((v["ratio_value"] for v in verdicts), default=None)
        with self.db if commit else contextlib.nullcontext():
            self.db.execute("INSERT OR REPLACE INTO executions VALUES (?,?,?,?,?,?,?,?,?,?)",
                            (run_id, case_id, target, status, message, stderr_tail, elapsed, inputs_digest,
                             deviations, None if worst is None else _num(worst)))
            self.db.execute("DELETE FROM verdicts WHERE run_id=? AND case_id=? AND target=?", (run_id, case_id, target))
            self.db.executemany("INSERT INTO verdicts VALUES (?,?,?,?,?,?,?)", [
                (run_id, case_id, target, v["key"], int(v["passed"]), _num(v["ratio_value"]),
                 json.dumps({k: x for k, x in v.items() if k != "ratio_value"})) for v in verdicts])

    def add_case_metrics(self, run_id: str, case_id: str, metrics: dict[str, Any], commit: bool = True) -> None:
        """Record case-level measurements of the reference (per running-variance convention); see add_execution."""
        with self.db if commit else contextlib.nullcontext():
            self.db.execute("INSERT OR REPLACE INTO case_metrics VALUES (?,?,?)", (run_id, case_id, json.dumps(metrics)))

    def commit(self) -> None:
        """Commit what add_execution and add_case_metrics recorded with commit=False."""
        self.db.commit()

    def case_metrics(self, run_id: str) -> dict[str, dict[str, Any]]:
        """case_id -> metrics of a run."""
        rows = self.db.execute("SELECT case_id, metrics FROM case_metrics WHERE run_id=?", (run_id,)).fetchall()
        return {r[0]: json.loads(r[1]) for r in rows}

    def add_event(self, run_id: str, event: str, target: str = "", detail: str = "") -> None:
        """Record something that happened to a run: 'broken' (a target marked broken, detail = reason), 'resumed'."""
        with self.db:
            self.db.execute("INSERT INTO run_events (run_id, time, event, target, detail) VALUES (?,?,?,?,?)",
                            (run_id, time.time(), event, target, detail))

    def set_run_options(self, run_id: str, options: dict[str, Any]) -> None:
        """Record how a run was invoked (plugins, target pattern, timeout, memory limit), for --resume."""
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO run_options VALUES (?,?)", (run_id, json.dumps(options)))

    def set_findings(self, run_id: str, findings: list[dict[str, Any]]) -> None:
        """Replace a run's findings, in one transaction, by `findings` (see `findings()` for the keys).

        Each minimal case (its canonical JSON in `minimal_case`) also goes into the cases table, so that
        `bncheck replay MINIMAL_CASE_ID --out DIR` finds a shrunk case, which no execution of the run ran.
        """
        with self.db:
            self.db.execute("DELETE FROM findings WHERE run_id=?", (run_id,))
            self.db.executemany("INSERT OR IGNORE INTO cases VALUES (?,?)",
                                [(f["minimal_case_id"], f["minimal_case"]) for f in findings])
            self.db.executemany("INSERT INTO findings VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", [
                (run_id, f["signature"], f["target"], f["quantity"], f["mode"], f["hypothesis"], f["classification"],
                 f["regime"], int(f["count"]), None if f["worst_ratio"] is None else _num(float(f["worst_ratio"])),
                 f["minimal_case_id"], f["minimal_case"], f["from_case_id"], int(bool(f["shrunk"])), f.get("repro"),
                 f.get("case_file")) for f in findings])

    def reopen_run(self, run_id: str) -> None:
        """Mark a run running again (it is being resumed)."""
        self.db.execute("UPDATE runs SET finished=NULL, status='running' WHERE run_id=?", (run_id,))
        self.db.commit()

    def finish_run(self, run_id: str, status: str) -> None:
        """Mark a run finished."""
        self.db.execute("UPDATE runs SET finished=?, status=? WHERE run_id=?", (time.time(), status, run_id))
        self.db.commit()

    # ---- reading -----------------------------------------------------------------------------
    def latest_run(self) -> str | None:
        """The most recently started run id."""
        row = self.db.execute("SELECT run_id FROM runs ORDER BY started DESC LIMIT 1").fetchone()
        return row[0] if row else None

    def run(self, run_id: str) -> dict[str, Any]:
        """A run's row as a dictionary."""
        row = self.db.execute("SELECT run_id, started, finished, command, sources, manifest, status FROM runs WHERE run_id=?",
                              (run_id,)).fetchone()
        if row is None:
            raise StoreError(f"no run {run_id!r} in {self.path}")
        return {"run_id": row[0], "started": row[1], "finished": row[2], "command": row[3],
                "sources": json.loads(row[4]), "manifest": json.loads(row[5]), "status": row[6]}

    def runs(self) -> list[str]:
        """Every run id, oldest first."""
        return [r[0] for r in self.db.execute("SELECT run_id FROM runs ORDER BY started")]

    def events(self, run_id: str, event: str | None = None) -> list[dict[str, Any]]:
        """A run's events in order, optionally of one kind."""
        q = "SELECT time, event, target, detail FROM run_events WHERE run_id=?" + (" AND event=?" if event else "") + " ORDER BY seq"
        rows = self.db.execute(q, (run_id, event) if event else (run_id,)).fetchall()
        return [{"time": r[0], "event": r[1], "target": r[2], "detail": r[3]} for r in rows]

    def broken_targets(self, run_id: str) -> dict[str, str]:
        """target -> why it was marked broken, for the targets of a run that were."""
        return {e["target"]: e["detail"] for e in self.events(run_id, "broken")}

    def run_options(self, run_id: str) -> dict[str, Any]:
        """How a run was invoked ({} for runs recorded before options were kept)."""
        row = self.db.execute("SELECT options FROM run_options WHERE run_id=?", (run_id,)).fetchone()
        return json.loads(row[0]) if row else {}

    def findings(self, run_id: str) -> list[dict[str, Any]]:
        """A run's findings as last finalised (after shrinking), worst classification first as in results.json.

        Keys: signature, target, quantity, mode, hypothesis, classification, regime, count, worst_ratio (1e308 for
        an infinite ratio), minimal_case_id, minimal_case (the case as a dict), from_case_id (the case shrinking
        started from; the minimal case itself when it did not shrink), shrunk, repro and case_file (paths relative
        to the output directory, or None).
        """
        rows = self.db.execute(
            "SELECT signature, target, quantity, mode, hypothesis, classification, regime, count, worst_ratio, "
            "minimal_case_id, minimal_case, from_case_id, shrunk, repro, case_file FROM findings WHERE run_id=? "
            "ORDER BY rowid", (run_id,)).fetchall()
        keys = ("signature", "target", "quantity", "mode", "hypothesis", "classification", "regime", "count",
                "worst_ratio", "minimal_case_id", "minimal_case", "from_case_id", "shrunk", "repro", "case_file")
        out = []
        for r in rows:
            f = dict(zip(keys, r))
            f["minimal_case"] = json.loads(f["minimal_case"])
            f["shrunk"] = bool(f["shrunk"])
            out.append(f)
        return out

    def execution_statuses(self, run_id: str) -> list[tuple[str, str, str]]:
        """(case_id, target, status) of every stored execution of a run, in case order."""
        return self.db.execute(
            "SELECT e.case_id, e.target, e.status FROM executions e LEFT JOIN run_cases r "
            "ON r.run_id=e.run_id AND r.case_id=e.case_id WHERE e.run_id=? ORDER BY r.position, e.target", (run_id,)).fetchall()

    def targets(self, run_id: str) -> list[dict[str, Any]]:
        """The targets of a run."""
        rows = self.db.execute("SELECT target, framework, device, version, available, reason, info FROM targets "
                               "WHERE run_id=? ORDER BY target", (run_id,)).fetchall()
        return [{"name": r[0], "framework": r[1], "device": r[2], "version": r[3], "available": bool(r[4]),
                 "reason": r[5], "info": json.loads(r[6])} for r in rows]

    def cases(self, run_id: str) -> list[tuple[str, dict[str, Any]]]:
        """(case_id, case dict) of a run, in order."""
        rows = self.db.execute("SELECT c.case_id, c.json FROM run_cases r JOIN cases c ON c.case_id=r.case_id "
                               "WHERE r.run_id=? ORDER BY r.position", (run_id,)).fetchall()
        return [(r[0], json.loads(r[1])) for r in rows]

    def executions(self, run_id: str) -> Iterator[dict[str, Any]]:
        """Every execution of a run with its verdicts, in case order."""
        verdicts: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for case_id, target, detail in self.db.execute(
                "SELECT case_id, target, detail FROM verdicts WHERE run_id=? ORDER BY rowid", (run_id,)):
            verdicts.setdefault((case_id, target), []).append(json.loads(detail))
        rows = self.db.execute(
            "SELECT e.case_id, e.target, e.status, e.message, e.stderr_tail, e.elapsed, e.inputs_digest, e.deviations, "
            "e.worst_ratio FROM executions e LEFT JOIN run_cases r ON r.run_id=e.run_id AND r.case_id=e.case_id "
            "WHERE e.run_id=? ORDER BY r.position, e.target", (run_id,))
        for r in rows:
            yield {"case_id": r[0], "target": r[1], "status": r[2], "message": r[3], "stderr_tail": r[4],
                   "elapsed": r[5], "inputs_digest": r[6], "deviation_count": r[7], "worst_ratio": r[8],
                   "verdicts": verdicts.get((r[0], r[1]), [])}
