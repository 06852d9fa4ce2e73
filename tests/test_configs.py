"""The shipped config files: each loads, says how to run it, and runs."""

import pathlib

import pytest

from jaxcf import cliconfig, config
from tests.conftest import REPO, train_cli

CONFIGS = sorted((REPO / "configs").glob("*.py"))


def test_there_are_configs():
  assert {p.stem for p in CONFIGS} >= {"book", "book_embedding_nn",
                                       "book_collab_nn", "sweep",
                                       "u1_ensemble", "autorec_u1"}


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_loads_and_documents_its_command(path: pathlib.Path):
  loaded = cliconfig.load_file(str(path))
  assert isinstance(loaded, config.RunConfig)
  text = path.read_text()
  assert f"python train.py --config=configs/{path.name}" in text
  assert loaded.replicas()  # a valid product of sweep axes


def test_book_config_is_the_default_run():
  book = cliconfig.load_file(str(REPO / "configs" / "book.py"))
  assert book.resolved() == config.RunConfig().resolved()


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_runs_shortened_on_tiny_data(path, tiny_ml, tmp_path, capsys,
                                     monkeypatch):
  monkeypatch.delenv("JAXCF_DATA", raising=False)
  assert train_cli(f"--config={path}", f"--data_dir={tiny_ml}",
                   "--epochs=1", f"--workdir={tmp_path / 'w'}") == 0, (
                       capsys.readouterr().err)
  assert (tmp_path / "w" / "config.json").exists()


def test_defaults_follow_the_models_trainer():
  """epochs, lr and wd left out are the book's for minibatch models and
  AutoRec's own for it, from flags and config files alike."""
  book = config.RunConfig().resolved().train
  assert (book.epochs, book.lr, book.wd) == (5, (5e-3,), (0.1,))
  rec = config.RunConfig(model=config.Model(model="autorec")).resolved()
  assert (rec.train.epochs, rec.train.lr, rec.train.wd) == (500, (1e-3,),
                                                           (100.0,))
  assert rec.train_config().eval_every == 50


def test_bare_values_are_lists_of_one():
  c = config.RunConfig(model=config.Model(model="embedding_nn",
                                          layers=(100, 50), y_range=(0, 5)),
                       train=config.Train(lr=1e-3, seed=[1, 2]))
  assert c.model.model == ("embedding_nn",)
  assert c.model.layers == ((100, 50),) and c.model.y_range == ((0, 5),)
  assert c.train.lr == (1e-3,) and c.train.seed == (1, 2)
  assert len(c.replicas()) == 2


@pytest.mark.parametrize("body, message", [
    ("return config.RunConfig(train=config.Train(learning_rate=1))",
     "get_config() failed: TypeError"),
    ("return config.RunConfig(train=config.Train(bs=0))",
     "--bs=0 must be a positive integer"),
    ("return 3", "must return a jaxcf.config.RunConfig"),
])
def test_a_bad_config_file_is_one_line(tmp_path, capsys, body, message):
  path = tmp_path / "bad.py"
  path.write_text(f"from jaxcf import config\ndef get_config():\n  {body}\n")
  assert train_cli(f"--config={path}") == 2
  err = capsys.readouterr().err
  assert "Traceback" not in err and message in err
