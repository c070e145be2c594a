"""A full, read-only or failing disk ends a command with one line and exit status 3, leaves no temporary file, and a
run it interrupts keeps its committed executions for --resume.

The disk is made to fail with RLIMIT_FSIZE (SIGXFSZ ignored, so a write past the limit fails with EFBIG, which
SQLite reports as a disk I/O error): no mount, no privileges.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from bncheck.files import disk_failure, write_atomic
from conftest import PLUGINS, ROOT, wait_for_executions, write_jsonl

LIMITED = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), int(sys.argv[1])))
sys.argv = ["bncheck", *sys.argv[2:]]
from bncheck.cli import main
main()
"""


def _limited(limit: int, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`bncheck ARGS` with no file allowed to grow past `limit` bytes (the test plugins importable)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(PLUGINS), str(ROOT / "src")]))
    return subprocess.run([sys.executable, "-c", LIMITED, str(limit), *args], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=300)


def _temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


def _one_line_error(r: subprocess.CompletedProcess[str], start: str = "bncheck: error: cannot write") -> str:
    """The error line of a command that failed with exit status 3, checked to be the only sign of the failure."""
    assert r.returncode == 3, r.stdout + r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith(start), r.stderr
    return line


def test_disk_failures_are_told_from_bncheck_faults(tmp_path: Path) -> None:
    """A full, read-only or failing disk (OSError or SQLite) is named; a missing file or bncheck's own SQL error is not."""
    assert disk_failure(OSError(errno.ENOSPC, "No space left on device", "/x/results.json")) == "/x/results.json: No space left on device"
    assert disk_failure(OSError(errno.EROFS, "Read-only file system")) == os.strerror(errno.EROFS)
    assert disk_failure(FileNotFoundError(errno.ENOENT, "No such file", "x")) is None
    db = tmp_path / "r.sqlite"
    sqlite3.connect(db).execute("CREATE TABLE t (x)").connection.commit()
    ro = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    with pytest.raises(sqlite3.OperationalError) as readonly:
        ro.execute("INSERT INTO t VALUES (1)")
    assert disk_failure(readonly.value) == "attempt to write a readonly database"
    with pytest.raises(sqlite3.OperationalError) as no_table:
        ro.execute("SELECT * FROM missing")
    assert disk_failure(no_table.value) is None
    assert disk_failure(sqlite3.OperationalError("database or disk is full")) == "database or disk is full"  # no code
    assert disk_failure(ValueError("disk is full")) is None


def test_write_atomic_leaves_the_old_file_and_no_temporary_when_the_write_fails(tmp_path: Path) -> None:
    """The file keeps its old content when the new one cannot be put in place, and the temporary is removed."""
    target = tmp_path / "results.json"
    target.write_text("old")
    write_atomic(target, "new")
    assert target.read_text() == "new"
    folder = tmp_path / "a-folder"
    (folder / "inside").mkdir(parents=True)
    with pytest.raises(OSError):
        write_atomic(folder, b"bytes")  # a folder with something in it cannot be replaced by a file
    assert folder.is_dir() and _temporaries(tmp_path) == []


def test_a_disk_that_fills_up_mid_run_keeps_what_was_committed_for_resume(tmp_path: Path) -> None:
    """No file may grow past 450 kB, and this run's store ends at 578 kB without a limit: the run stops with one
    line and exit 3, naming the run to resume; what it committed is intact, no temporary is left, and --resume with
    room completes it."""
    seeds = [s for s in range(1, 200) if not 100 < s < 130][:150]  # the plugin's faults and deviations left out
    cases = write_jsonl(tmp_path / "c.jsonl", [{"shape": [6, 3, 4], "seed": s} for s in seeds])
    run = ("run", str(cases), "--targets", "faulty.*", "--plugin", "faulty_plugin", "--shrink", "0")
    out = tmp_path / "out"
    line = _one_line_error(_limited(450_000, *run, "--out", str(out), cwd=tmp_path))
    assert "disk I/O error" in line and "--resume" in line, line
    run_id = line.split("bncheck run --resume ")[1].split()[0]
    con = sqlite3.connect(out / "results.sqlite")
    assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    stored = con.execute("SELECT count(*) FROM executions").fetchone()[0]
    con.close()
    assert stored < 150
    assert _temporaries(tmp_path) == []

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(PLUGINS), str(ROOT / "src")]))
    resumed = subprocess.run([sys.executable, "-m", "bncheck.cli", "run", "--resume", run_id, "--out", str(out)],
                             cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{150 - stored} of 150 executions missing" in resumed.stderr
    doc = json.loads((out / "results.json").read_text())
    assert doc["run"]["status"] == "complete" and len(doc["executions"]) == 150


def test_no_room_for_the_store_is_one_line_naming_the_disk(tmp_path: Path) -> None:
    """Not even the store's schema fits: the output directory is refused for the disk, not called a foreign file."""
    cases = write_jsonl(tmp_path / "c.jsonl", [{"shape": [6, 3, 4], "seed": s} for s in range(1, 4)])
    r = _limited(60_000, "run", str(cases), "--targets", "faulty.*", "--plugin", "faulty_plugin", "--out",
                 str(tmp_path / "out"), cwd=tmp_path)
    assert r.returncode == 3 and "Traceback" not in r.stderr, r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("bncheck: error: cannot use output directory") and "disk I/O error; free some space" in line, line
    assert "not a usable bncheck results file" not in line


def test_no_room_for_the_cases_says_to_run_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk fills up before the run's cases are stored: nothing can be resumed, and the error says so."""
    from click.testing import CliRunner

    from bncheck import cli
    from bncheck.store import Store

    def full(self: Store, run_id: str, cases: list[tuple[str, str]]) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(Store, "add_cases", full)
    monkeypatch.syspath_prepend(str(PLUGINS))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(PLUGINS), str(ROOT / "src")]))  # for the worker
    cases = write_jsonl(tmp_path / "c.jsonl", [{"shape": [6, 3, 4], "seed": 1}])
    r = CliRunner().invoke(cli.main, ["run", str(cases), "--targets", "faulty.*", "--plugin", "faulty_plugin",
                                      "--out", str(tmp_path / "out")])
    assert r.exit_code == 3, r.output
    line = r.output.strip().splitlines()[-1]
    assert line == (f"bncheck: error: cannot write ({tmp_path / 'out' / 'results.sqlite'}): database or disk is full; "
                    "run the command again once there is room"), r.output


def test_other_commands_that_write_fail_with_one_line(tmp_path: Path) -> None:
    """A suite that does not fit: `bncheck generate` ends with one line, exit 3, and no partial file."""
    line = _one_line_error(_limited(2_000, "generate", "random", "many", "-n", "200", "--out", str(tmp_path / "cases"),
                                    cwd=tmp_path), start=f"bncheck: error: {tmp_path / 'cases' / 'many.jsonl'}: ")
    assert line.endswith("File too large; free some space or choose another location"), line
    assert list((tmp_path / "cases").glob("*")) == []


def test_an_output_folder_removed_mid_run_is_one_line_saying_so(tmp_path: Path) -> None:
    """A cleanup job deletes the output folder while a run writes into it: exit 3 and one line naming the report that
    could not be written and that the store went with it (not a traceback, whose status would read "deviations")."""
    cases = write_jsonl(tmp_path / "c.jsonl", [{"shape": [6, 3, 4], "seed": s} for s in range(1, 31)])
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(PLUGINS), str(ROOT / "src")]), BNCHECK_FAULTY_SLEEP="0.2")
    proc = subprocess.Popen([sys.executable, "-m", "bncheck.cli", "run", str(cases), "--targets", "faulty.*", "--plugin",
                             "faulty_plugin", "--shrink", "0", "--out", str(out)], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_executions(out / "results.sqlite", 3, proc)
    shutil.rmtree(out)
    _, stderr = proc.communicate(timeout=120)
    r = subprocess.CompletedProcess(proc.args, proc.returncode, "", stderr)
    line = _one_line_error(r)
    assert line == (f"bncheck: error: cannot write: {out / 'results.json'}: No such file or directory; the results "
                    "store is gone too: run the command again"), stderr


def test_a_read_only_output_folder_is_not_told_to_free_space(tmp_path: Path) -> None:
    """EACCES/EROFS get advice about permissions, not about space."""
    import errno

    from bncheck.files import WriteError, advice

    assert "permissions" in advice(WriteError(errno.EACCES, "Permission denied", "x")) and "space" not in advice(
        WriteError(errno.EACCES, "Permission denied", "x"))
    assert "read-only" in advice(OSError(errno.EROFS, "Read-only file system"))
    assert "space" in advice(OSError(errno.ENOSPC, "No space left on device"))
