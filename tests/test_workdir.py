"""The workdir contract (`jaxcf.workdir`): a refused or failed run leaves a
workdir byte-identical; one process at a time; --restart moves, never
deletes; saves are atomic under SIGKILL; damage and full disks are one line.

In-process except where the contract is about processes (the lock, kills).
"""

import errno
import hashlib
import os
from pathlib import Path
import random
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.conftest import REPO, train_cli, write_movielens

BASE = ["--epochs=2", "--bs=16", "--n_factors=4", "--checkpoint_seconds=0"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  return write_movielens(tmp_path_factory.mktemp("ml") / "ml-100k")


def args(folder, workdir, *extra):
  return [f"--data_dir={folder.parent}", f"--workdir={workdir}", *BASE,
          *extra]


@pytest.fixture(scope="module")
def finished(folder, tmp_path_factory):
  """Workdirs of a finished single run and a finished sweep."""
  root = tmp_path_factory.mktemp("finished")
  assert train_cli(*args(folder, root / "single")) == 0
  assert train_cli(*args(folder, root / "sweep", "--lr=1e-2,2e-2")) == 0
  return root


def snapshot(workdir: Path) -> dict:
  """Every entry under workdir (but the lock) -> its bytes' hash (None for
  a folder)."""
  out = {}
  for path in sorted(workdir.rglob("*")):
    if path.name == ".lock":
      continue
    out[str(path.relative_to(workdir))] = (
        None if path.is_dir() else hashlib.sha256(path.read_bytes()).digest())
  return out


def flip_byte(path: Path, at: float = 0.5) -> None:
  data = bytearray(path.read_bytes())
  data[int(len(data) * at)] ^= 0xFF
  path.write_bytes(bytes(data))


def largest_file(folder: Path) -> Path:
  return max((p for p in folder.rglob("*") if p.is_file()),
             key=lambda p: p.stat().st_size)


def damage_every_checkpoint(w: Path) -> None:
  for step in (w / "checkpoints").iterdir():
    if step.name.isdigit():
      flip_byte(largest_file(step / "state"))


# (what the user does, the workdir it meets, extra flags, how it is refused)
REFUSALS = [
    ("other --wd", "single", ["--wd=0.2"], "other settings (--wd 0.1 there"),
    ("too large --bs", "single", ["--bs=100000"], "larger than"),
    ("other --model", "single", ["--model=dot"], "--model \"dot_bias\" there"),
    ("a sweep into a single run", "single", ["--lr=1e-2,2e-2"],
     "holds a single run; this command is a sweep of 2 replicas"),
    ("a single run into a sweep", "sweep", [],
     "holds a sweep of 2 replicas; this command is a single run"),
    ("another sweep", "sweep", ["--lr=1e-2,3e-2"], "a sweep of 2 replicas "
     "with other settings (--lr [0.01, 0.02] there, [0.01, 0.03] now)"),
    ("bad flag with --restart", "single", ["--restart", "--wd=nan"],
     "--wd=nan must be a number >= 0"),
    ("--restart with too large --bs", "single", ["--restart", "--bs=100000"],
     "larger than"),
    ("--checkpoint_steps=-5", "single", ["--checkpoint_steps=-5"],
     "--checkpoint_steps=-5 must be 0"),
    ("--checkpoint_every=0", "single", ["--checkpoint_every=0"],
     "--checkpoint_every=0 must be at least 1"),
    ("--keep_checkpoints=0", "single", ["--keep_checkpoints=0"],
     "--keep_checkpoints=0 must be at least 1"),
    ("--seed=-1", "single", ["--seed=-1"], "must be an integer in [0, 2^32)"),
    ("huge --seed", "single", ["--seed=100000000000000000000"],
     "must be an integer in [0, 2^32)"),
    ("--lr=nan", "single", ["--lr=nan"], "--lr=nan must be a positive"),
    ("--div=nan", "single", ["--div=nan"], "--div=nan must be a positive"),
    ("--y_range=0,inf", "single", ["--y_range=0,inf"], "with finite"),
    ("a ratings file that is a folder", "single",
     ["--ratings_file={data}"], "ratings file is not a file"),
    ("damaged run.json", "single:run.json", [], "run.json cannot be read"),
    ("every checkpoint damaged", "single:checkpoints", [],
     "every checkpoint in"),
    ("other data", "single:data", [], "the data's content differs"),
    ("before run.json: other --lr (its checkpoints say)", "single:legacy",
     ["--lr=0.02"], "--lr 0.005 there, 0.02 now"),
    ("results nothing identifies", "single:unknown", [],
     "of a run it cannot tell the settings of"),
    ("run.json of another shape", "single:shape", [],
     "is not a jaxcf run.json"),
    ("--ensemble into a plain sweep", "sweep", ["--lr=1e-2,2e-2",
                                                "--ensemble"],
     "--ensemble false there, true now"),
    ("--restart with a --mesh the devices lack", "single",
     ["--restart", "--mesh=data:4"], "--mesh"),
    ("--restart with --row_kernel=cpp and adamw", "single",
     ["--restart", "--row_kernel=cpp"], "use it with --optimizer"),
]


@pytest.mark.parametrize("meets, extra, message", [
    r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS])
def test_refused_runs_leave_the_workdir_byte_identical(
    folder, finished, tmp_path, capsys, meets, extra, message):
  kind, _, damage = meets.partition(":")
  w = tmp_path / "w"
  shutil.copytree(finished / kind, w)
  data = folder
  if damage == "run.json":
    (w / "run.json").write_text("{not json")
  elif damage == "checkpoints":
    damage_every_checkpoint(w)
  elif damage == "data":
    data = write_movielens(tmp_path / "other" / "ml-100k", seed=1)
  elif damage == "legacy":  # a workdir from before run.json
    (w / "run.json").unlink()
    (w / "config.json").unlink()
  elif damage == "unknown":
    for name in ("run.json", "config.json", "checkpoints"):
      shutil.rmtree(w / name) if (w / name).is_dir() else (w / name).unlink()
  elif damage == "shape":
    (w / "run.json").write_text('{"kind": "single", "fingerprint": [1]}')
  before = snapshot(w)
  extra = [e.format(data=tmp_path) for e in extra]
  capsys.readouterr()
  assert train_cli(*args(data, w), *extra) == 2
  err = capsys.readouterr().err
  assert "Traceback" not in err
  assert err.count("\n") == 1 and err.startswith("error: "), err
  assert message in err
  assert snapshot(w) == before


def test_restart_moves_the_old_run_aside(folder, finished, tmp_path, capsys):
  w = tmp_path / "w"
  shutil.copytree(finished / "single", w)
  before = snapshot(w)
  assert train_cli(*args(folder, w), "--lr=1e-2,2e-2", "--restart") == 0
  assert f"moved the earlier run to {w / 'previous-1'}" in (
      capsys.readouterr().out)
  assert snapshot(w / "previous-1") == before  # moved whole, byte for byte
  assert (w / "sweep.json").exists() and not (w / "summary.json").exists()
  assert train_cli(*args(folder, w), "--restart") == 0
  assert snapshot(w / "previous-1") == before
  assert (w / "previous-2" / "sweep.json").exists()
  assert (w / "summary.json").exists()


def test_restart_moves_a_damaged_run_aside_and_odd_names_are_left_alone(
    folder, finished, tmp_path, capsys):
  w = tmp_path / "w"
  shutil.copytree(finished / "single", w)
  (w / "run.json").write_text('{"kind": "single", "finge')
  (w / "summary.json.tmp").mkdir()  # a user's folder, not our leftover
  (w / "previous-1").symlink_to(tmp_path / "nowhere")  # a dangling link
  assert train_cli(*args(folder, w), "--restart") == 0
  assert f"moved the earlier run to {w / 'previous-2'}" in (
      capsys.readouterr().out)
  assert (w / "previous-2" / "run.json").read_text().startswith('{"kind"')
  assert (w / "summary.json.tmp").is_dir()


def test_the_same_command_again_continues(folder, finished, tmp_path,
                                           capsys):
  import jaxcf
  w = tmp_path / "w"
  shutil.copytree(finished / "single", w)
  before = jaxcf.load(str(w)).predict(1, ["Twin (1995)"])
  assert train_cli(*args(folder, w)) == 0
  assert "the run was already complete" in capsys.readouterr().out
  assert jaxcf.load(str(w)).predict(1, ["Twin (1995)"]) == pytest.approx(
      before, abs=0)


def test_a_second_process_is_refused_while_the_first_holds_the_lock(
    folder, tmp_path, capsys):
  """A real train.py holds the workdir; a second run exits 2 at once naming
  its pid; once the holder is SIGKILLed the kernel frees the lock and the
  run continues from its checkpoint."""
  w = tmp_path / "w"
  holder = subprocess.Popen(
      [sys.executable, str(REPO / "train.py"), *args(folder, w),
       "--epochs=2000", "--bs=4"], stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True,
      env={**os.environ, "JAX_PLATFORMS": "cpu"})
  try:
    deadline = time.time() + 120
    while time.time() < deadline and not (w / "checkpoints").exists():
      assert holder.poll() is None, holder.stdout.read()
      time.sleep(0.1)
    started = time.perf_counter()
    assert train_cli(*args(folder, w), "--epochs=2000", "--bs=4") == 2
    assert time.perf_counter() - started < 5  # at once, before reading
    err = capsys.readouterr().err
    assert f"is in use by process {holder.pid}" in err
    assert err.count("\n") == 1
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  from jaxcf import workdir
  workdir.Workdir.open(str(w)).close()  # the kernel released it


def test_the_lock_is_per_workdir_not_per_process(folder, tmp_path, capsys):
  """flock is held by an open file: the same process opening the workdir
  twice (two runs in one Python session) is refused too."""
  from jaxcf import errors, workdir
  with workdir.Workdir.open(str(tmp_path / "w")):
    with pytest.raises(errors.UserError, match=f"process {os.getpid()}"):
      workdir.Workdir.open(str(tmp_path / "w"))
  workdir.Workdir.open(str(tmp_path / "w")).close()  # released


def test_an_unwritable_workdir_is_one_line(folder, tmp_path, capsys):
  (tmp_path / "file").write_text("x")
  assert train_cli(*args(folder, tmp_path / "file")) == 2
  err = capsys.readouterr().err
  assert err.startswith(f"error: --workdir={tmp_path / 'file'}: ")
  assert err.count("\n") == 1
  assert (tmp_path / "file").read_text() == "x"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_ratings_file_is_one_line(tmp_path, capsys):
  ratings = tmp_path / "r.csv"
  ratings.write_text("user,item,rating\n1,1,4\n2,1,3\n")
  ratings.chmod(0)
  assert train_cli(f"--ratings_file={ratings}") == 2
  assert capsys.readouterr().err == (
      f"error: ratings file cannot be read (permission denied): {ratings}; "
      "make it readable (chmod +r) or copy it\n")


# Saving: atomic under SIGKILL, whole on a full disk, checksummed.

SAVE_LOOP = """
import sys
import jaxcf
from jaxcf import workdir
a, b, w = sys.argv[1:]
models = [jaxcf.load(a), jaxcf.load(b)]
with workdir.Workdir.open(w) as out:
  print("ready", flush=True)
  for n in range(10**6):
    out.replace_dir("model", models[n % 2].save)
"""


def test_a_kill_at_any_instant_leaves_a_whole_model(folder, finished,
                                                     tmp_path):
  """A process saving two different models into one workdir, over and over,
  is SIGKILLed at random instants; each time the workdir holds one of the
  two, whole (its checksums verified), and the next open cleans up."""
  import jaxcf
  from jaxcf import workdir
  a, b = finished / "single", finished / "sweep"
  expected = {k: jaxcf.load(str(k)).artifact.members[0].params[
      "user_factors"]["embedding"] for k in (a, b)}
  w = tmp_path / "w"
  shutil.copytree(a, w)
  rng = random.Random(0)
  for trial in range(5):
    saver = subprocess.Popen(
        [sys.executable, "-c", SAVE_LOOP, str(a), str(b), str(w)],
        stdout=subprocess.PIPE, text=True,
        env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert saver.stdout.readline() == "ready\n"
    time.sleep(rng.uniform(0.05, 1.0))
    saver.send_signal(signal.SIGKILL)
    saver.wait()
    loaded = jaxcf.load(str(w))  # before any cleaning
    got = loaded.artifact.members[0].params["user_factors"]["embedding"]
    assert any(np.array_equal(got, e) for e in expected.values()), trial
    workdir.Workdir.open(str(w)).close()
    leftovers = [p.name for p in w.iterdir() if "model" in p.name
                 and p.name != "model"]
    assert not leftovers, leftovers


def test_damaged_models_are_refused_never_read_wrong(finished, tmp_path):
  """A flipped byte in the array data or the metadata is refused; a flip
  anywhere else in the saved model either is refused or changes nothing."""
  import jaxcf
  from jaxcf import errors
  original = jaxcf.load(str(finished / "single"))
  files = sorted(p.relative_to(finished / "single" / "model") for p in
                 (finished / "single" / "model").rglob("*") if p.is_file())
  for name in files:
    w = tmp_path / str(name).replace("/", "_")
    shutil.copytree(finished / "single" / "model", w)
    flip_byte(w / name)
    try:
      loaded = jaxcf.load(str(w))
    except errors.UserError as e:
      assert str(w) in str(e)
      continue
    for mine, theirs in zip(loaded.artifact.members, original.artifact.members):
      for key in mine.params:
        np.testing.assert_array_equal(mine.params[key]["embedding"],
                                      theirs.params[key]["embedding"])
    assert loaded.artifact.titles.tolist() == original.artifact.titles.tolist()
  model = finished / "single" / "model"
  for part in ("arrays/d", "meta"):  # the arrays' bytes, the JSON
    w = tmp_path / part.replace("/", "_")
    shutil.copytree(model, w)
    flip_byte(w / largest_file(model / part).relative_to(model))
    with pytest.raises(errors.UserError, match="damaged"):
      jaxcf.load(str(w))


def test_checksums_catch_any_changed_array_or_metadata():
  """What orbax would read back without complaint (a value changed in
  place) differs from the checksums saved with it."""
  from jaxcf import checkpoint, errors
  arrays = {"a": np.arange(6, dtype=np.float32), "b": [np.ones((2, 2))]}
  meta = checkpoint.with_checksums(arrays, {"titles": ["Twin (1995)"]})
  checkpoint.verify_arrays(arrays, meta["checksums"], "m")
  assert checkpoint.verify_meta(meta, "m")[0] == {"titles": ["Twin (1995)"]}
  changed = {"a": arrays["a"].copy(), "b": arrays["b"]}
  changed["a"][3] = np.float32(4e37)
  with pytest.raises(errors.UserError, match=r"m is damaged: the bytes of "
                     r"array \['a'\]"):
    checkpoint.verify_arrays(changed, meta["checksums"], "m")
  with pytest.raises(errors.UserError, match="m is damaged: its metadata"):
    checkpoint.verify_meta({**meta, "titles": ["Twin (1996)"]}, "m")


def test_a_damaged_latest_checkpoint_falls_back_to_the_previous(
    folder, finished, tmp_path, capsys):
  """The finished run's last checkpoint is damaged: the rerun says so,
  moves it aside, resumes from epoch 1 and ends exactly where it ended."""
  w = tmp_path / "w"
  shutil.copytree(finished / "single", w)
  steps = sorted(int(p.name) for p in (w / "checkpoints").iterdir()
                 if p.name.isdigit())
  assert len(steps) == 2
  flip_byte(largest_file(w / "checkpoints" / str(steps[-1]) / "state"))
  before = (w / "summary.json").read_text()
  capsys.readouterr()
  assert train_cli(*args(folder, w)) == 0
  out = capsys.readouterr().out
  assert (f"checkpoint {steps[-1]} is damaged (the bytes of array" in out
          or f"checkpoint {steps[-1]} is damaged (" in out)
  assert f"resuming from checkpoint {steps[0]}" in out
  assert (w / "checkpoints-damaged" / str(steps[-1])).is_dir()
  import json
  final = lambda text: {k: v for k, v in json.loads(text)["final"].items()
                        if k != "seconds"}
  assert final((w / "summary.json").read_text()) == final(before)


def _mount_tmpfs(path: Path, kib: int) -> bool:
  path.mkdir()
  done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kib}k",
                         "tmpfs", str(path)], capture_output=True)
  return done.returncode == 0


def test_a_full_disk_is_one_line_and_the_previous_state_intact(
    folder, finished, tmp_path, capsys):
  """A real full file system (a small tmpfs) where one can be mounted, an
  injected ENOSPC otherwise: exit 2, one line, the workdir unchanged."""
  disk = tmp_path / "disk"
  size = lambda f: sum(p.stat().st_size for p in f.rglob("*") if p.is_file())
  mounted = _mount_tmpfs(disk, size(finished / "single") // 1024 + 2048)
  try:
    w = disk / "w"
    shutil.copytree(finished / "single", w)
    if mounted:  # leave room for everything but half a model
      free = shutil.disk_usage(disk).free - size(w / "model") // 2
      with open(disk / "filler", "wb") as f:
        f.write(b"\0" * free)
    before = snapshot(w)
    capsys.readouterr()
    if mounted:
      code = train_cli(*args(folder, w))
    else:
      from jaxcf import trained

      def full(self, path):
        os.makedirs(path)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

      patch = pytest.MonkeyPatch()
      patch.setattr(trained.TrainedModel, "save", full)
      try:
        code = train_cli(*args(folder, w))
      finally:
        patch.undo()
    assert code == 2
    err = capsys.readouterr().err
    assert err == (f"error: No space left on device while saving {w}/model; "
                   "the previous model/ is intact\n")
    assert snapshot(w) == before
  finally:
    if mounted:
      subprocess.run(["umount", str(disk)], check=False)
