r"""Step-by-step replay of a fastai run in jaxcf: the proof of exactness.

Runs the book's fastai code (CollabDataLoaders.from_df, collab_learner or the
book's CollabNN, fit_one_cycle) while recording its initial weights, every
training batch and every batch loss; then starts jaxcf from the same weights,
feeds it the same batches and compares losses, final weights and validation
MSE. Needs the bench extra (torch, fastai) beside jaxcf:

  pip install -e '.[bench]'
  python benchmarks/fastai_replay.py --data_dir=../shared/data --epochs=1

Torch runs with one thread (two threads on a busy 2-core machine collapse).
"""

from __future__ import annotations

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np

from jaxcf import data, models, optim, training

flags.DEFINE_string("data_dir", None, "Folder that is or holds ml-100k/.")
flags.DEFINE_integer("epochs", 1, "Epochs of fit_one_cycle.")
flags.DEFINE_integer("seed", 42, "fastai's set_seed (the split and init).")
flags.DEFINE_string("out", None, "Also write the markdown table here.")
flags.DEFINE_list("models", ["dot_bias", "embedding_nn", "collab_nn"],
                  "Which models to replay.")
FLAGS = flags.FLAGS

# (fastai recipe, weight decay) per jaxcf model.
WD = {"dot_bias": 0.1, "embedding_nn": 0.1, "collab_nn": 0.01}


def fastai_run(name, ratings, epochs, seed):
  """Trains with fastai; returns what it did, step by step."""
  import torch  # pylint: disable=g-import-not-at-top
  from fastai.collab import CollabDataLoaders, collab_learner  # pylint: disable=g-import-not-at-top
  from fastai.tabular.all import (Callback, Embedding, Learner, MSELossFlat,  # pylint: disable=g-import-not-at-top
                                  Module, set_seed, sigmoid_range)
  from torch import nn  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(1)

  class CollabNN(Module):  # the book's concat-MLP, chapter 8
    def __init__(self, user_sz, item_sz, y_range=(0, 5.5), n_act=100):
      self.user_factors = Embedding(*user_sz)
      self.item_factors = Embedding(*item_sz)
      self.layers = nn.Sequential(
          nn.Linear(user_sz[1] + item_sz[1], n_act), nn.ReLU(),
          nn.Linear(n_act, 1))
      self.y_range = y_range

    def forward(self, x):
      embs = self.user_factors(x[:, 0]), self.item_factors(x[:, 1])
      return sigmoid_range(self.layers(torch.cat(embs, dim=1)),
                           *self.y_range)

  class Record(Callback):
    def before_fit(self):
      self.xs, self.ys, self.losses = [], [], []

    def before_batch(self):
      if self.training:
        self.xs.append(self.xb[0].numpy().copy())
        self.ys.append(self.yb[0].numpy().copy())

    def after_batch(self):
      if self.training:
        self.losses.append(float(self.learn.loss))

  set_seed(seed)
  dls = CollabDataLoaders.from_df(ratings, item_name="title", bs=64)
  if name == "dot_bias":
    learn = collab_learner(dls, n_factors=50, y_range=(0, 5.5))
  elif name == "embedding_nn":
    learn = collab_learner(dls, use_nn=True, layers=[100, 50],
                           y_range=(0, 5.5))
  else:
    from fastai.tabular.all import get_emb_sz  # pylint: disable=g-import-not-at-top
    learn = Learner(dls, CollabNN(*get_emb_sz(dls)), loss_func=MSELossFlat())
  init = {k: v.detach().numpy().copy()
          for k, v in learn.model.state_dict().items()}
  rec = Record()
  with learn.no_bar(), learn.no_logging():
    learn.fit_one_cycle(epochs, 5e-3, wd=WD[name], cbs=[rec])
  final = {k: v.detach().numpy().copy()
           for k, v in learn.model.state_dict().items()}
  valid_x = np.concatenate([b[0].numpy() for b in dls.valid])
  valid_y = np.concatenate([b[1].numpy() for b in dls.valid])[:, 0]
  with learn.no_bar():
    valid_mse = float(learn.validate()[0])
  return dict(init=init, final=final, x=np.stack(rec.xs),
              y=np.stack(rec.ys)[..., 0], loss=np.array(rec.losses),
              valid_x=valid_x, valid_y=valid_y, valid_mse=valid_mse,
              users=list(dls.classes["user"]),
              titles=list(dls.classes["title"]))


def to_flax(name, sd):
  """A fastai state_dict as jaxcf (params, batch_stats)."""
  t = lambda k: jnp.asarray(sd[k].T)
  e = lambda k: {"embedding": jnp.asarray(sd[k])}
  if name == "dot_bias":
    return {"user_factors": e("u_weight.weight"),
            "item_factors": e("i_weight.weight"),
            "user_bias": e("u_bias.weight"),
            "item_bias": e("i_bias.weight")}, {}
  if name == "collab_nn":
    return {"user_factors": e("user_factors.weight"),
            "item_factors": e("item_factors.weight"),
            "Linear_0": {"dense": {"kernel": t("layers.0.weight"),
                                   "bias": jnp.asarray(sd["layers.0.bias"])}},
            "Linear_1": {"dense": {"kernel": t("layers.2.weight"),
                                   "bias": jnp.asarray(sd["layers.2.bias"])}},
            }, {}
  params = {"user_factors": e("embeds.0.weight"),
            "item_factors": e("embeds.1.weight"),
            "Linear_2": {"dense": {"kernel": t("layers.2.0.weight"),
                                   "bias": jnp.asarray(sd["layers.2.0.bias"])}}}
  stats = {}
  for layer in (0, 1):
    params[f"Linear_{layer}"] = {"dense": {
        "kernel": t(f"layers.{layer}.0.weight")}}
    bn = f"layers.{layer}.2."
    params[f"BatchNorm_{layer}"] = {"scale": jnp.asarray(sd[bn + "weight"]),
                                    "bias": jnp.asarray(sd[bn + "bias"])}
    stats[f"BatchNorm_{layer}"] = {"mean": jnp.asarray(sd[bn + "running_mean"]),
                                   "var": jnp.asarray(sd[bn + "running_var"])}
  return params, stats


def replay(name, run, perturb=0.0):
  """jaxcf on fastai's batches from fastai's weights (times 1 + perturb)."""
  # Batches are in fastai's index space; its vocabularies give table sizes.
  model = models.create(name, len(run["users"]), len(run["titles"]))
  steps = len(run["x"])
  tx = optim.one_cycle_adamw(5e-3, WD[name], steps)
  state = training.create_train_state(model, tx, jax.random.key(0))
  params, stats = to_flax(name, run["init"])
  params = jax.tree.map(lambda p: p * (1 + perturb), params)
  if stats:
    state = state.replace(model_state={**state.model_state,
                                       "batch_stats": stats})
  state = state.replace(params=params)
  batches = np.arange(steps * 64, dtype=np.int32).reshape(steps, 64)
  flat = data.Ratings(jnp.asarray(run["x"][..., 0].reshape(-1), jnp.int32),
                      jnp.asarray(run["x"][..., 1].reshape(-1), jnp.int32),
                      jnp.asarray(run["y"].reshape(-1), jnp.float32))
  state, losses = jax.jit(training.train_epoch)(state, flat, batches)
  valid = data.Ratings(jnp.asarray(run["valid_x"][:, 0], jnp.int32),
                       jnp.asarray(run["valid_x"][:, 1], jnp.int32),
                       jnp.asarray(run["valid_y"], jnp.float32))
  mse = float(jax.jit(training.evaluate)(state, valid)["mse"])
  final, _ = to_flax(name, run["final"])
  param_diff = max(jax.tree.leaves(jax.tree.map(
      lambda a, b: float(jnp.abs(a - b).max()), state.params, final)))
  diff = np.abs(np.asarray(losses) - run["loss"])
  return diff, param_diff, mse, np.asarray(losses)


def main(argv):
  del argv
  from jaxcf import datasets  # pylint: disable=g-import-not-at-top
  table, _, _ = datasets.read_table(datasets.Source(data_dir=FLAGS.data_dir))
  ratings = table.rename(columns={"item": "movie"})[
      ["user", "movie", "rating", "timestamp", "title"]]
  # The last column is float32 chaos, for scale: how far jaxcf drifts from
  # itself when its starting weights are multiplied by 1 + 1e-7.
  lines = []
  say = lambda line: (print(line, flush=True), lines.append(line))
  say("| model | steps | max abs loss diff, first 100 steps | all steps | "
      "max abs weight diff | fastai valid MSE | jaxcf valid MSE | jaxcf vs "
      "itself (init x (1+1e-7)): max abs loss diff |")
  say("|---|---|---|---|---|---|---|---|")
  for name in FLAGS.models:
    run = fastai_run(name, ratings, FLAGS.epochs, FLAGS.seed)
    loss_diff, param_diff, mse, losses = replay(name, run)
    nudged = replay(name, run, perturb=1e-7)[3]
    chaos = float(np.abs(losses - nudged).max())
    say(f"| {name} | {len(run['x'])} | {loss_diff[:100].max():.1e} | "
        f"{loss_diff.max():.1e} | {param_diff:.1e} "
        f"| {run['valid_mse']:.6f} | {mse:.6f} | {chaos:.1e} |")
  if FLAGS.out:
    with open(FLAGS.out, "w") as f:
      f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
  app.run(main)
