"""A run as a function of its config: `train_and_evaluate(config)`.

    data = load_data(config)                      # files -> CollabData
    replicas = config.replicas()                  # the sweep axes' product
    one model:  training.fit(...)  -> ranking, summary.json, model/
    otherwise:  sweep.train_sweep(...) -> ranking of replicas, ensemble,
                sweep.json, model/ (the best replica, or the ensemble)

With a workdir it writes metrics.jsonl (a line per replica and
evaluation, `jaxcf.loop`'s rows), and at the end config.json (the config
as JSON), the summary and the model (`jaxcf.artifact`, which `jaxcf.load`
reads); it checkpoints a single run so that rerunning the same config
resumes it exactly.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys

import jax

from jaxcf import (compilecache, config as config_lib, datasets, distributed,
                   features, io, models, outputs, plots, preflight, ranking,
                   resume, sweep, synthetic, tblog, trained, training,
                   workdir as workdir_lib)
from jaxcf.errors import UserError


def load_data(config: config_lib.RunConfig, log=print):
  """The ratings the config names, split and encoded, with side features
  when a model needs them."""
  d = config.data
  seed = d.split_seed if d.split_seed is not None else config.train.seed[0]
  if d.dataset == "synthetic":
    return synthetic.generate(d.n_users, d.n_items, d.n_ratings,
                              valid_pct=d.valid_pct, seed=seed, log=log)
  item_name = d.item_name or config.resolved().data.item_name
  if d.ratings_file and not d.items_file and item_name != "title":
    log("items are keyed by id (no --items_file gives titles)")
  source = datasets.Source(
      ratings_file=d.ratings_file, data_dir=d.data_dir, dataset=d.dataset,
      columns=io.parse_columns_flag(d.columns), sep=d.sep,
      items_file=d.items_file, item_sep=d.items_sep, encoding=d.encoding,
      item_columns=io.parse_columns_flag(d.item_columns) or (0, 1))
  y_ranges = {r.y_range for r in config.replicas()}
  data = datasets.load(source, item_name=item_name, split=d.split,
                       valid_pct=d.valid_pct, seed=seed,
                       valid_file=d.valid_file, duplicates=d.duplicates,
                       y_ranges=y_ranges, clip=d.clip_ratings, log=log)
  side_prior = any(r.side_prior for r in config.replicas())
  if any(f.needs_side for f in config.model.families) or side_prior:
    what = "--side_prior" if side_prior else "--model=side_nn"
    if data.release is None:
      raise UserError(f"{what} uses a MovieLens release's side "
                      "information (--dataset=ml-100k, ml-1m, ...); a "
                      "--ratings_file has none")
    kinds = ([k.strip() for k in d.side.split(",") if k.strip()]
             if not side_prior else ["user", "item"])
    data = features.attach(data, features.movielens(
        data, data.folder, kinds, release=data.release))
    log(f"side information: {', '.join(kinds)}")
  return data


def train_and_evaluate(config: config_lib.RunConfig, log=print,
                       command: bool = False) -> dict:
  """Runs `config` (see the module docstring); returns the summary, whose
  'seconds' hold the wall time of each phase (from the process's start
  when `command`, as train.py runs it).

  Raises:
    UserError: a mistake in the config or the data, before any work.
    outputs.Stopped: a signal stopped a single run after a checkpoint.
  """
  config = config.resolved()
  config.to_json()  # a value JSON cannot hold fails here, before any work
  if config.output.plot:
    plots.check()
  if config.hosts.compilation_cache:
    compilecache.enable()
  _join_processes(config)
  replicas = config.replicas()
  single = (len(replicas) == 1 and not config.output.ensemble
            and replicas[0].family.trainer == "batches")
  if not single:
    preflight.check_sweep(config)
  phases = outputs.Phases(since_process_start=command)
  with contextlib.ExitStack() as closing:
    workdir = None
    if config.output.workdir:  # locked before anything is read
      workdir = distributed.on_leader(
          lambda: workdir_lib.Workdir.open(config.output.workdir, log))
      if workdir:
        closing.callback(workdir.close)
    with phases.timed("read"):
      try:
        data = load_data(config, log)
      except OSError as e:  # unreadable input: permissions, I/O errors
        raise UserError(f"cannot read {e.filename or 'the data'}: "
                        f"{e.strerror or e}") from None
    # Synthetic data is a function of its config; files need their content.
    fingerprint = config.fingerprint(
        None if config.data.dataset == "synthetic" else data.content_hash())
    mesh, model = preflight.check_run(config, replicas, data, single)
    if config.output.workdir:
      n, full_batch = len(replicas), replicas[0].family.trainer != "batches"
      what = ("a single run" if single else
              f"a {replicas[0].model} run" if n == 1 and full_batch else
              f"a sweep of {n} replicas")
      claimed = dict(fingerprint)
      if not single:  # what a sweep saves as its model
        claimed.update(ensemble=config.output.ensemble,
                       ensemble_top=config.output.ensemble_top)
      distributed.on_leader(lambda: workdir.claim(
          "single" if single else "sweep", claimed, config.output.restart,
          what))
    if single:
      summary = run_single(config, replicas[0], data, phases, workdir,
                           fingerprint, mesh, model, log)
      distributed.barrier("finished")  # the others wait while 0 writes
      return summary
    return run_sweep(config, replicas, data, phases, workdir, log)


def _join_processes(config: config_lib.RunConfig) -> None:
  """With --num_processes > 1: joins the others; only process 0 prints and
  writes files (the others keep stderr)."""
  h = config.hosts
  distributed.initialize(h.coordinator_address, h.num_processes,
                         h.process_id)
  if h.num_processes == 1:
    return
  if not h.mesh:
    raise UserError("--num_processes > 1 trains over a mesh of all their "
                    f"devices: add --mesh (e.g. data:{jax.device_count()})")
  print(f"process {jax.process_index()} of {jax.process_count()}: "
        f"{jax.local_device_count()} of {jax.device_count()} devices",
        file=sys.stderr, flush=True)
  if config.output.workdir:
    distributed.check_same(os.path.abspath(config.output.workdir),
                           "--workdir")
  if not distributed.is_leader():
    sys.stdout = open(os.devnull, "w")


def run_single(config: config_lib.RunConfig, replica, data,
               phases: outputs.Phases, workdir: workdir_lib.Workdir | None,
               fingerprint: dict, mesh, model, log=print) -> dict:
  """One model: fit, ranking, summary.json and model/ in the workdir
  (claimed; None in the other processes of a multi-host run, which write
  only their checkpoint shards)."""
  h, o = config.hosts, config.output
  train_config = config.train_config(replica)
  device = jax.devices()[0]
  log(f"model {replica.model}: {models.count_params(model):,} parameters; "
      f"device {device.platform} ({device.device_kind})")
  out = workdir.path if workdir else None
  metrics = outputs.Metrics(out)
  board = None
  if o.tensorboard and out:
    steps = data.train.size // train_config.batch_size * train_config.epochs
    board = tblog.Writer(os.path.join(out, "tensorboard"), steps,
                         train_config.lr, train_config.pct_start,
                         train_config.div, train_config.div_final,
                         train_config.moms)

  # The events reach their file on close, whichever way the run ends (the
  # command skips the interpreter's exit handlers).
  with contextlib.ExitStack() as closing:
    if board:
      closing.callback(board.close)

    def on_epoch(row):
      metrics.write(row)
      if board:
        board.epoch(row)

    checkpoints = None
    if o.workdir:  # every process writes its shards
      checkpoints = resume.RunCheckpoints(
          os.path.join(o.workdir, "checkpoints"), fingerprint,
          keep=o.keep_checkpoints, log=log if workdir else None)
    if checkpoints:
      closing.callback(checkpoints.close)
    with outputs.StopOnSignal() as stop:
      result = training.fit(
          model, data, train_config, on_epoch=on_epoch,
          on_losses=board.losses if board else None, checkpoints=checkpoints,
          checkpoint_every=o.checkpoint_every,
          checkpoint_seconds=o.checkpoint_seconds,
          chunk_steps=o.checkpoint_steps or None,
          stop_requested=lambda: distributed.any_process(stop.requested()),
          mesh=mesh, shard_data=h.shard_data,
          log=log if distributed.is_leader() else None)
    if result.stopped:
      where = (f"a checkpoint is in {checkpoints.directory}; rerun the same "
               "command to continue" if checkpoints else "nothing was saved "
               "(no --workdir)")
      # With several processes, one signalled process stops them all.
      name = stop.name or "a signal to another process"
      raise outputs.Stopped(f"stopped by {name}; {where}",
                            stop.signum or signal.SIGTERM)
    state = result.state
    if jax.process_count() > 1:  # gathered, for this process's devices alone
      state = state.replace(params=distributed.to_host(state.params),
                            model_state=distributed.to_host(state.model_state),
                            opt_state=None, rng=None)
    final = result.history[-1]
    speed = (f"{result.samples_per_second:,.0f} training samples/s"
             if result.train_seconds else "the run was already complete")
    log(f"final valid MSE {final['valid_loss']:.4f} (RMSE "
        f"{final['valid_rmse']:.4f}); {speed}, compile "
        f"{result.compile_seconds:.1f}s")
    for name, seconds in (("setup", result.setup_seconds),
                          ("compile", result.compile_seconds),
                          ("train", result.train_seconds),
                          ("evaluation", result.eval_seconds)):
      phases.add(name, seconds)
    with phases.timed("ranking"):
      top = ranking.evaluate_ranking(state, data.train, data.valid,
                                     data.n_items, log=log)
    log(outputs.ranking_line(top))
    summary = {
        "final": final, "ranking": top,
        "best_valid_loss": min(h["valid_loss"] for h in result.history),
        "n_params": models.count_params(model),
        "compile_seconds": result.compile_seconds,
        "train_seconds": result.train_seconds,
        "train_samples_per_second": result.samples_per_second,
        **outputs.context(data, config),
    }
    if not out:
      return _finish(summary, phases, log)
    with phases.timed("save"):
      saved = None
      if config.data.dataset != "synthetic":  # no ids or titles worth a model
        saved = trained.TrainedModel.from_training(
            replica, state.params, state.model_state, data,
            info={"summary": summary})
        workdir.replace_dir("model", saved.save)
      workdir.write_json("config.json", config.to_json())
    summary = _finish(summary, phases, log)
    workdir.write_json("summary.json", summary)
    log(f"wrote {metrics.path}, summary.json" + (" and model/" if saved else
                                                  ""))
    if saved is None:
      return summary
    if board:
      if "item_factors" in saved.state.params:
        labels = (saved.titles if saved.titles is not None
                  else saved.items.decode(range(len(saved.items))))
        board.embedding(saved.state.params["item_factors"]["embedding"],
                        labels, "item_factors")
      log(f"wrote TensorBoard events: tensorboard --logdir="
          f"{os.path.join(out, 'tensorboard')}")
    if o.plot:
      workdir.write_file("loss.png",
                         lambda f: plots.loss_plot(result.history, f))
      log(f"wrote {workdir.join('loss.png')}")
    return summary


def _finish(summary: dict, phases: outputs.Phases, log) -> dict:
  """The summary with the phases' seconds, also printed."""
  log(phases.line())
  return {**summary, "seconds": phases.summary()}


def run_sweep(config: config_lib.RunConfig, replicas, data,
              phases: outputs.Phases, workdir: workdir_lib.Workdir | None,
              log=print) -> dict:
  """Many replicas: a ranking, the ensemble, sweep.json and model/ (the
  best replica, or the ensemble with --ensemble) in the workdir
  (claimed)."""
  o = config.output
  hparams = [r.hparams() for r in replicas]
  swept = [k for k in hparams[0]
           if len({json.dumps(h[k]) for h in hparams}) > 1]
  trainer = replicas[0].family.trainer
  full_batch = trainer != "batches"
  log(f"sweep of {len(replicas)} replicas over {', '.join(swept) or 'nothing'}"
      + (f", {config.train.epochs} full-batch epochs" if trainer ==
         "full_batch" else f", {config.train.epochs} Gibbs sweeps" if
         trainer == "gibbs" else "")
      + f"; device {jax.devices()[0].platform}")
  metrics = outputs.Metrics(workdir.path if workdir else None)
  result = sweep.train_sweep(
      replicas, data, config.train_config(), chunk=o.chunk or None,
      ensemble_top=o.ensemble_top if o.ensemble else None, log=log,
      on_epoch=lambda r, row: metrics.write(
          {"replica": r, **hparams[r], **row}))
  order = result.ranking()
  ranked = [outputs.ranking_row(rank, i, hparams[i],
                                result.results[i].history)
            for rank, i in enumerate(order, 1)]
  log(outputs.ranking_table(ranked, swept))
  if result.ensemble:
    e = result.ensemble
    log(f"ensemble of {len(e['members'])} replicas: valid MSE "
        f"{e['valid_loss']:.4f} (RMSE {e['valid_rmse']:.4f}); best single "
        f"{ranked[0]['valid_loss']:.4f}")
  if not full_batch:
    log(f"{result.samples_per_second:,.0f} training samples/s over all "
        f"replicas, compile {result.compile_seconds:.1f}s")
  summary = {
      "n_replicas": len(replicas), "swept": swept, "ranking": ranked,
      "ensemble": result.ensemble,
      "compile_seconds": result.compile_seconds,
      "train_seconds": result.train_seconds,
      "train_samples_per_second": result.samples_per_second,
      **outputs.context(data, config),
  }
  phases.add("compile", result.compile_seconds)
  phases.add("train", result.train_seconds)
  if not workdir:
    return _finish(summary, phases, log)
  with phases.timed("save"):
    members = ([i for i in order if i in result.ensemble["members"]]
               if result.ensemble else order[:1])
    chosen = [result.results[i] for i in members]
    saved = trained.TrainedModel.from_members(
        [(r.replica, r.params, r.model_state) for r in chosen], data,
        info={"best_replica": ranked[0], "ensemble": result.ensemble})
    workdir.replace_dir("model", saved.save)
    workdir.write_json("config.json", config.to_json())
  summary = _finish(summary, phases, log)
  workdir.write_json("sweep.json", summary)
  what = (f"the ensemble of {len(chosen)}" if result.ensemble
          else "the best replica")
  log(f"wrote {metrics.path}, sweep.json and model/ ({what})")
  if o.plot:
    workdir.write_file("sweep.png",
                       lambda f: plots.sweep_plot(result, swept, f))
    log(f"wrote {workdir.join('sweep.png')}")
  return summary
