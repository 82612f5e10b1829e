"""Journal-file integrity (flower_exp/journal.py): a torn last line is cut off by writers (with a
backup, under Optuna's append lock) and reported by readers; a file that is not a journal, a
directory, an unreadable file and a read-only journal for a sweep are refused with one line.
Journals are written by Optuna directly with a cheap objective: no training here."""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import assert_one_line_error
from flower_exp import journal
from flower_exp.config import HeartbeatConfig
from flower_exp.errors import FlowerExpError
from flower_exp.study import open_storage
from flower_exp.study.names import ATTR_PARENT
from projects import write_project

STUDY = "tiny-tiny"
SWEEP = {
    "trials": 3,
    "sampler": {"name": "random", "seed": 1},
    "pruner": {"name": "none"},
    "params": {"lr_max": {"low": 1.0e-3, "high": 5.0e-3, "log": True}, "cnn_width": {"choices": [4, 8]}},
    "fixed": {"epochs": 1},
}


def _objective(trial) -> float:
    return trial.suggest_float("lr_max", 1.0e-3, 5.0e-3, log=True) + trial.suggest_categorical("cnn_width", [4, 8])


def _plain_study(path: Path, trials: int = 3):
    """A study written by Optuna alone (what an earlier sweep leaves), ``trials`` COMPLETE."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(
        study_name=STUDY,
        storage=JournalStorage(JournalFileBackend(str(path))),
        direction="maximize",
        sampler=optuna.samplers.RandomSampler(seed=0),
    )
    # As a sweep leaves it: a later sweep on it need not wait for a parent run to appear.
    study.set_user_attr(ATTR_PARENT, "0" * 32)
    study.optimize(_objective, n_trials=trials)
    return study


def _reread(path: Path):
    """The study as a fresh plain Optuna reader sees it (raises if the journal is damaged)."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    return optuna.load_study(study_name=STUDY, storage=JournalStorage(JournalFileBackend(str(path))))


def _writer(path: Path):
    return open_storage(str(path), HeartbeatConfig(), on_stale=lambda study, trial: None)


def _reader(path: Path):
    return open_storage(str(path), HeartbeatConfig(), readonly=True)


@pytest.fixture
def torn(tmp_path) -> tuple[Path, bytes]:
    """A journal whose last append was cut 40 bytes short; and its bytes."""
    path = tmp_path / "optuna" / "journal.log"
    path.parent.mkdir()
    _plain_study(path)
    data = path.read_bytes()[:-40]
    path.write_bytes(data)
    return path, data


def _backups(path: Path) -> list[Path]:
    return sorted(path.parent.glob(path.name + ".torn-*"))


# --------------------------------------------------------------------------- torn last line


def test_writer_cuts_a_torn_last_line_keeping_a_backup_and_appends_cleanly(torn, capsys):
    import optuna

    path, data = torn
    complete = data[: data.rfind(b"\n") + 1]
    study = optuna.load_study(study_name=STUDY, storage=_writer(path))
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and "cut off a torn last line" in lines[0], lines
    assert f"({len(data) - len(complete)} bytes" in lines[0]
    [backup] = _backups(path)
    assert str(backup) in lines[0] and backup.read_bytes() == data
    assert path.read_bytes() == complete

    study.optimize(_objective, n_trials=2)
    trials = _reread(path).get_trials(deepcopy=False)
    assert len(trials) == 5 and [t.state.name for t in trials[-2:]] == ["COMPLETE", "COMPLETE"]


def test_reader_reports_a_torn_last_line_and_changes_nothing(torn, capsys):
    import optuna

    path, data = torn
    study = optuna.load_study(study_name=STUDY, storage=_reader(path))
    assert len(study.trials) == 3  # Optuna skips the torn line: the last trial still RUNNING
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and "torn" in lines[0] and "the next sweep cuts it off" in lines[0], lines
    assert path.read_bytes() == data and not _backups(path)
    assert not Path(str(path) + ".lock").exists()


def test_a_line_torn_while_a_writer_runs_is_cut_before_its_next_append(tmp_path, capsys):
    path = tmp_path / "journal.log"
    _plain_study(path)
    import optuna

    study = optuna.load_study(study_name=STUDY, storage=_writer(path))
    with open(path, "ab") as f:
        f.write(b'{"op_code":8,"worker_id":"dead-worker","trial_id":0,"us')  # a process died mid-append
    study.optimize(_objective, n_trials=1)
    assert "cut off a torn last line" in capsys.readouterr().err
    assert len(_reread(path).trials) == 4 and len(_backups(path)) == 1


def test_an_append_in_progress_under_the_lock_is_not_taken_for_a_torn_line(tmp_path, capsys):
    """The writer takes Optuna's append lock before cutting: it sees the append completed."""
    from optuna.storages.journal import JournalFileSymlinkLock

    path = tmp_path / "journal.log"
    _plain_study(path)
    whole = path.read_bytes()
    lock = JournalFileSymlinkLock(str(path))
    lock.acquire()  # another process is appending: its line is half written
    path.write_bytes(whole[:-40])
    opened = threading.Thread(target=_writer, args=(path,))
    opened.start()
    time.sleep(0.5)
    assert opened.is_alive()  # waiting for the lock
    path.write_bytes(whole)  # the append finishes...
    lock.release()  # ...and the lock is released
    opened.join(30)
    assert not opened.is_alive()
    assert path.read_bytes() == whole and not _backups(path)
    assert "torn" not in capsys.readouterr().err


# --------------------------------------------------------------------------- not a journal


def _interior_bad_line(data: bytes) -> bytes:
    lines = data.splitlines(keepends=True)
    return b"".join(lines[:2] + [lines[2][:30] + lines[3]] + lines[4:])  # an append glued onto a torn line


NOT_JOURNALS = {
    "random bytes": (lambda data: os.urandom(3000), "line 1: not an Optuna journal operation"),
    "a yaml file": (lambda data: b"trials: 3\nsampler: tpe\n", "line 1: not an Optuna journal operation"),
    "a json list": (lambda data: b'[{"op_code": 0}]\n', "line 1: not an Optuna journal operation"),
    "an unknown op_code": (lambda data: b'{"op_code":99,"worker_id":"w"}\n' + data, "line 1: unknown op_code 99"),
    "a glued interior line": (_interior_bad_line, "damaged Optuna journal (line 3: not JSON)"),
    "a blank interior line": (lambda data: data.replace(b"\n", b"\n\n", 1), "damaged Optuna journal (line 2: not JSON)"),
    "garbage after the last line": (lambda data: data + b"\x00\xff garbage", "not an Optuna journal operation"),
}


@pytest.mark.parametrize("case", NOT_JOURNALS, ids=list(NOT_JOURNALS))
@pytest.mark.parametrize("opener", [_writer, _reader], ids=["sweep", "status"])
def test_a_file_that_is_not_a_journal_is_refused_and_left_unchanged(tmp_path, case, opener):
    make, message = NOT_JOURNALS[case]
    path = tmp_path / "journal.log"
    _plain_study(path)
    path.write_bytes(make(path.read_bytes()))
    before = path.read_bytes()
    with pytest.raises(FlowerExpError) as caught:
        opener(path)
    assert str(path) in str(caught.value) and message in str(caught.value), str(caught.value)
    assert "\n" not in str(caught.value)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["journal.log"]


def test_repair_refuses_a_last_line_that_turned_into_garbage_under_the_lock(torn):
    """Between the check and the lock, something else rewrote the tail: nothing is cut."""
    path, data = torn
    path.write_bytes(data[: data.rfind(b"\n") + 1] + b"\x00garbage")
    before = path.read_bytes()
    with pytest.raises(FlowerExpError, match="the last line is not an Optuna journal operation; nothing was changed"):
        journal.repair(path, print)
    assert path.read_bytes() == before and not _backups(path)


@pytest.mark.parametrize("opener", [_writer, _reader], ids=["sweep", "status"])
def test_a_directory_is_refused(tmp_path, opener):
    with pytest.raises(FlowerExpError, match="is a directory; expected a journal file"):
        opener(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_an_unreadable_journal_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "journal.log"
    _plain_study(path)

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    # Root reads any file whatever its mode: deny the read itself.
    monkeypatch.setattr(journal, "open", denied, raising=False)
    for opener in (_writer, _reader):
        with pytest.raises(FlowerExpError, match=r"journal.log: cannot read it \(Permission denied\)"):
            opener(path)


def test_status_of_a_missing_journal_creates_nothing(tmp_path):
    with pytest.raises(FlowerExpError, match="no such journal file"):
        _reader(tmp_path / "new" / "journal.log")
    assert list(tmp_path.iterdir()) == []


@contextlib.contextmanager
def _read_only_copy(folder: Path, data: bytes):
    """``folder/journal.log`` holding ``data``, file and folder read-only (even for root: a
    tmpfs remounted read-only; the test is skipped where root cannot mount)."""
    folder.mkdir()
    path = folder / "journal.log"
    if os.geteuid() != 0:
        path.write_bytes(data)
        path.chmod(0o444)
        folder.chmod(0o555)
        try:
            yield path
        finally:
            folder.chmod(0o755)
        return
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here and root ignores permissions")
    try:
        path.write_bytes(data)
        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
        yield path
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def test_a_read_only_journal_is_refused_for_a_sweep_and_read_for_status(torn, tmp_path, capsys):
    import optuna

    _path, data = torn
    with _read_only_copy(tmp_path / "ro", data) as path:
        with pytest.raises(FlowerExpError, match="journal.log: (the file|its folder .*) is read-only; a sweep appends"):
            _writer(path)
        assert len(optuna.load_study(study_name=STUDY, storage=_reader(path)).trials) == 3
        with pytest.raises(FlowerExpError, match="new/journal.log: cannot create its folder"):
            _writer(path.parent / "new" / "journal.log")
        assert path.read_bytes() == data and sorted(p.name for p in path.parent.iterdir()) == ["journal.log"]
    assert "the next sweep cuts it off" in capsys.readouterr().err


# --------------------------------------------------------------------------- the commands


@pytest.fixture
def project(tmp_path, demo_root) -> Path:
    return write_project(tmp_path / "project", demo_root, "tiny", SWEEP)


def test_cli_status_then_sweep_on_a_torn_journal(cli, project, torn):
    """The issue's reproduction: status reads a torn journal and says so, the sweep (its budget
    already reached: no training) cuts the line off once, and status reads it cleanly after."""
    path, data = torn
    status = ("status", "--storage", str(path), "--study", STUDY)
    first = cli(*status, cwd=project)
    assert first.returncode == 0 and "the next sweep cuts it off" in first.stderr, first.stderr
    assert path.read_bytes() == data

    swept = cli("sweep", "-s", "tiny", "--trials", "2", "--storage", str(path), "--quiet", cwd=project)
    assert swept.returncode == 0, swept.stderr[-3000:]
    assert swept.stderr.count("cut off a torn last line") == 1 and "Traceback" not in swept.stderr
    [backup] = _backups(path)
    assert backup.read_bytes() == data

    again = cli(*status, cwd=project)
    assert again.returncode == 0 and "torn" not in again.stderr, again.stderr
    assert f"study {STUDY}" in again.stdout


BAD_STORAGE = {
    "random bytes": (lambda folder: _write(folder / "noise.log", os.urandom(2000)), "not an Optuna journal file"),
    "a directory": (lambda folder: folder, "is a directory"),
    "a damaged journal": (
        lambda folder: _write(folder / "j.log", b'{"op_code":0,"worker_id":"w"}\nnot json\n'),
        "damaged Optuna journal (line 2: not JSON)",
    ),
}


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("case", BAD_STORAGE, ids=list(BAD_STORAGE))
@pytest.mark.parametrize("command", ["sweep", "status"])
def test_cli_refuses_a_storage_that_is_not_a_journal(cli, project, tmp_path, case, command):
    make, message = BAD_STORAGE[case]
    folder = tmp_path / "store"
    folder.mkdir()
    storage = make(folder)
    before = {p: p.read_bytes() for p in folder.iterdir()}
    args = ("-s", "tiny", "--storage", str(storage)) + (("--trials", "1") if command == "sweep" else ())
    assert_one_line_error(cli(command, *args, cwd=project), str(storage), message)
    assert {p: p.read_bytes() for p in folder.iterdir()} == before
    assert not (project / "mlruns").exists()


def test_cli_sweep_refuses_a_read_only_journal(cli, project, torn, tmp_path):
    _path, data = torn
    with _read_only_copy(tmp_path / "ro", data) as path:
        assert_one_line_error(cli("sweep", "-s", "tiny", "--storage", str(path), cwd=project), str(path), "read-only")
        assert path.read_bytes() == data
    assert not (project / "mlruns").exists()
