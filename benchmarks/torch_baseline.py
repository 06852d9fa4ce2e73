"""The PyTorch baseline: jaxcf's models and training, the usual PyTorch way.

Tensors live on the device; a Python loop walks the shuffled batches of an
epoch; `torch.optim.AdamW` (betas (0.95, 0.99) cycled by `OneCycleLR`,
eps 1e-5, decoupled decay on embeddings and Linear weights only) does what
fastai's Adam does. Used by `throughput.py`; needs the bench extra.
"""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F


def sigmoid_range(x, low, high):
  return torch.sigmoid(x) * (high - low) + low


def embedding(n: int, width: int) -> nn.Embedding:
  """fastai's Embedding: N(0, 1) fmod 2, times 0.01."""
  emb = nn.Embedding(n, width)
  with torch.no_grad():
    emb.weight.normal_().fmod_(2).mul_(0.01)
  return emb


def embedding_size(n: int) -> int:
  return min(600, round(1.6 * n**0.56))


class DotProductBias(nn.Module):

  def __init__(self, n_users, n_items, n_factors=50, y_range=(0.0, 5.5)):
    super().__init__()
    self.user_factors = embedding(n_users, n_factors)
    self.item_factors = embedding(n_items, n_factors)
    self.user_bias = embedding(n_users, 1)
    self.item_bias = embedding(n_items, 1)
    self.y_range = y_range

  def forward(self, users, items):
    dot = (self.user_factors(users) * self.item_factors(items)).sum(1)
    x = dot + self.user_bias(users)[:, 0] + self.item_bias(items)[:, 0]
    return sigmoid_range(x, *self.y_range)


class EmbeddingNN(nn.Module):
  """Linear (no bias) -> ReLU -> BatchNorm per hidden layer, as fastai's."""

  def __init__(self, n_users, n_items, layers=(100, 50), y_range=(0.0, 5.5)):
    super().__init__()
    self.user_factors = embedding(n_users, embedding_size(n_users))
    self.item_factors = embedding(n_items, embedding_size(n_items))
    width = self.user_factors.embedding_dim + self.item_factors.embedding_dim
    blocks = []
    for out in layers:
      bn = nn.BatchNorm1d(out)
      with torch.no_grad():
        bn.bias.fill_(1e-3)
      blocks += [nn.Linear(width, out, bias=False), nn.ReLU(), bn]
      width = out
    self.layers = nn.Sequential(*blocks, nn.Linear(width, 1))
    self.y_range = y_range

  def forward(self, users, items):
    x = torch.cat([self.user_factors(users), self.item_factors(items)], 1)
    return sigmoid_range(self.layers(x)[:, 0], *self.y_range)


MODELS = {"dot_bias": DotProductBias, "embedding_nn": EmbeddingNN}


def optimizer(model: nn.Module, lr: float, wd: float, total_steps: int,
              variant: str = "foreach"):
  """AdamW + OneCycleLR as fastai's fit_one_cycle; variant: foreach | fused
  | single (one tensor at a time)."""
  decay, no_decay = [], []
  for module in model.modules():
    for name, p in module.named_parameters(recurse=False):
      is_norm = isinstance(module, nn.BatchNorm1d)
      (no_decay if is_norm or name == "bias" else decay).append(p)
  kwargs = {"fused": True} if variant == "fused" else {
      "foreach": variant == "foreach"}
  opt = torch.optim.AdamW([{"params": decay, "weight_decay": wd},
                           {"params": no_decay, "weight_decay": 0.0}],
                          lr=lr, betas=(0.95, 0.99), eps=1e-5, **kwargs)
  sched = torch.optim.lr_scheduler.OneCycleLR(
      opt, max_lr=lr, total_steps=total_steps, pct_start=0.25,
      div_factor=25.0, final_div_factor=1e5 / 25.0, base_momentum=0.85,
      max_momentum=0.95)
  return opt, sched


def train_epoch(model, step_fn, users, items, ratings, batch_size,
                generator) -> float:
  """One shuffled epoch, last partial batch dropped; returns the mean loss."""
  model.train()
  n = len(ratings)
  perm = torch.randperm(n, generator=generator, device=users.device)
  total = torch.zeros((), device=users.device)
  steps = n // batch_size
  for k in range(steps):
    rows = perm[k * batch_size:(k + 1) * batch_size]
    total += step_fn(users[rows], items[rows], ratings[rows])
  return float(total) / steps


def make_step(model, opt, sched, compile_model: bool = False):
  forward = torch.compile(model) if compile_model else model

  def step(users, items, ratings):
    loss = F.mse_loss(forward(users, items), ratings)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()
    return loss.detach()

  return step


@torch.no_grad()
def evaluate(model, users, items, ratings, batch_size=8192) -> float:
  model.eval()
  sq = torch.zeros((), dtype=torch.float64, device=users.device)
  for k in range(0, len(ratings), batch_size):
    pred = model(users[k:k + batch_size], items[k:k + batch_size])
    sq += ((pred - ratings[k:k + batch_size])**2).sum().double()
  return float(sq) / len(ratings)
