"""Every check that can refuse a run, made before anything is trained or
any file of the workdir changes (`experiment.train_and_evaluate` calls
them; a --restart moves the old run only after them)."""

from __future__ import annotations

import jax

from jaxcf import config as config_lib, gibbs, placement, sharding, training
from jaxcf.errors import UserError
from jaxcf.models import autorec as autorec_family


def check_run(config: config_lib.RunConfig, replicas, data, single: bool):
  """Every check that can refuse the run, before anything in the workdir
  changes (a --restart moves the old run only after them). Returns the
  mesh and model of a single run (else None, None)."""
  if replicas[0].family.trainer == "gibbs":
    for replica in replicas:
      gibbs.check(replica.normalised(), config.train_config(replica))
    return None, None
  if replicas[0].family.trainer == "full_batch":
    for replica in replicas:
      autorec_family.matrix_shape(data.n_users, data.n_items,
                                  replica.normalised().by)
    return None, None
  placement.steps_per_epoch(data.train.size, config.train.bs, None)
  if not single:
    return None, None
  h = config.hosts
  mesh = sharding.make_mesh(h.mesh) if h.mesh else None
  model = replicas[0].create_model(data, mesh)
  training.plan(model, data, config.train_config(replicas[0]), mesh,
                h.shard_data)
  return mesh, model



def check_sweep(config: config_lib.RunConfig) -> None:
  if jax.process_count() > 1:
    raise UserError("sweeps run in one process; drop --num_processes")
  for name, value in (("tensorboard", config.output.tensorboard),
                      ("mesh", config.hosts.mesh),
                      ("shard_data", config.hosts.shard_data)):
    if value:
      raise UserError(f"--{name} applies to one run; drop it for sweeps")
  if config.train.row_kernel != "xla":
    raise UserError(f"--row_kernel={config.train.row_kernel} applies to one "
                    "run (the kernels do not vmap over replicas); drop it "
                    "for sweeps")
