r"""Cold start: how well do we predict users the model never saw?

10% of MovieLens 100k's users are held out entirely (seeded). The models
train on the other users' ratings (a random 10% of those kept for
validation). For each held-out user, 10 ratings (drawn at random) are the
ones they "give" the model, and the rest are scored; RMSE pools every scored
rating of every held-out user, the same set for every row:

  global mean            the training mean rating
  item biases            dot_bias folded in with no rating: the average user
  dot_bias + n ratings   dot_bias, the user's factors and bias solved by
                         ridge regression (item side frozen) from n ratings
  side_nn, features only side_nn (user, item and time features, 10% of user
                         ids hidden in training): the new user's age,
                         gender and occupation, no rating
  side_nn + n ratings    the same, its user embedding fitted to n ratings

  python benchmarks/cold_start.py --data_dir=../shared/data \
      --out=benchmarks/results/cold_start.md
"""

from __future__ import annotations

import time

from absl import app, flags
import numpy as np

from jaxcf import (data, datasets, features, movielens, sidefiles, sweep,
                   trained, training)

flags.DEFINE_string("data_dir", None, "Folder that is or holds ml-100k/.")
flags.DEFINE_float("held_out", 0.1, "Share of users held out entirely.")
flags.DEFINE_integer("seed", 0, "Seed of the held-out users, the order of "
                     "their ratings, and training.")
flags.DEFINE_list("shots", ["1", "5", "10"], "Ratings folded in.")
flags.DEFINE_string("out", None, "Also write the markdown table here.")
FLAGS = flags.FLAGS


def split(table, rng):
  """(train rows, valid rows, {new user: (pool rows, scored rows)}).

  A held-out user's rows of titles that no training row has are dropped
  (no model knows those items).
  """
  users = np.sort(table["user"].unique())
  new = set(rng.choice(users, int(round(FLAGS.held_out * len(users))),
                       replace=False).tolist())
  is_new = table["user"].isin(new).to_numpy()
  known = rng.permutation(np.nonzero(~is_new)[0])
  cut = len(known) // 10
  train = known[cut:]
  known_titles = table["title"].iloc[train].unique()
  usable = is_new & table["title"].isin(known_titles).to_numpy()
  pools = {}
  for user, rows in table[usable].groupby("user").indices.items():
    rows = rng.permutation(np.nonzero(usable)[0][rows])
    pools[user] = (rows[:10], rows[10:])
  return train, known[:cut], pools


def trained_model(replica, d):
  result = training.fit(replica.create_model(d), d, training.TrainConfig(
      lr=replica.lr, wd=replica.wd, seed=replica.seed), log=None)
  print(f"  {replica.model}: valid MSE {result.history[-1]['valid_loss']:.4f}"
        f" on the known users", flush=True)
  return trained.TrainedModel.from_training(
      replica, result.state.params, result.state.model_state, d)


def main(argv):
  del argv
  start = time.perf_counter()
  rng = np.random.default_rng(FLAGS.seed)
  table, _, folder = datasets.read_table(datasets.Source(
      data_dir=FLAGS.data_dir))
  train_rows, valid_rows, pools = split(table, rng)
  print(f"{len(pools)} held-out users; training on {len(train_rows):,} "
        f"ratings of the others", flush=True)
  d = data.prepare(table, train_rows, valid_rows, item_key="title")
  d = features.attach(d, features.movielens(d, folder))
  dot = trained_model(sweep.Replica(seed=FLAGS.seed), d)
  side = trained_model(sweep.Replica(model="side_nn", id_dropout=0.1,
                                     seed=FLAGS.seed), d)
  people = sidefiles.users(movielens.ML100K, folder).set_index("user")
  times = features.scaled_times(table)
  shots = [0] + [int(s) for s in FLAGS.shots]
  errors = {name: [] for name in ["global mean"] + [
      f"{m} + {n} ratings" if n else ("item biases" if m == "dot_bias"
                                       else "side_nn, features only")
      for m in ("dot_bias", "side_nn") for n in shots]}
  mean = float(np.asarray(d.train.ratings).mean())
  for user, (pool, scored) in pools.items():
    items = table["title"].to_numpy()[scored]
    truth = table["rating"].to_numpy()[scored]
    errors["global mean"].append(mean - truth)
    who = people.loc[user]
    profile = {"age": who["age"], "gender": who["gender"],
               "occupation": who["occupation"]}
    for n in shots:
      given = list(zip(table["title"].to_numpy()[pool[:n]],
                       table["rating"].to_numpy()[pool[:n]]))
      for name, model, kwargs in (
          ("dot_bias", dot, {}),
          ("side_nn", side, {"features": profile})):
        folded = model.fold_in(given, **kwargs)
        preds = model.predict_for(folded, items,
                                  times=times[scored] if name == "side_nn"
                                  else None)
        key = (f"{name} + {n} ratings" if n else
               "item biases" if name == "dot_bias" else
               "side_nn, features only")
        errors[key].append(preds - truth)
  n_scored = sum(len(s) for _, s in pools.values())
  lines = [f"| {len(pools)} new users, {n_scored:,} scored ratings | RMSE |",
           "|---|---|"]
  for name, errs in errors.items():
    rmse = float(np.sqrt(np.mean(np.concatenate(errs)**2)))
    lines.append(f"| {name} | {rmse:.4f} |")
  text = "\n".join(lines)
  print(text)
  print(f"({time.perf_counter() - start:.0f}s)")
  if FLAGS.out:
    with open(FLAGS.out, "w") as f:
      f.write(text + "\n")


if __name__ == "__main__":
  app.run(main)
