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
  assert book == config.RunConfig()


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_runs_shortened_on_tiny_data(path, tiny_ml, tmp_path, capsys,
                                     monkeypatch):
  monkeypatch.delenv("JAXCF_DATA", raising=False)
  assert train_cli(f"--config={path}", f"--data_dir={tiny_ml}",
                   "--epochs=1", f"--workdir={tmp_path / 'w'}") == 0, (
                       capsys.readouterr().err)
  assert (tmp_path / "w" / "config.json").exists()
