// Row-wise embedding kernels for XLA:CPU, called through jax.ffi.
//
// XLA:CPU moves embedding rows with generic gather/scatter loops, and a
// row-wise optimiser's step at bs 8192 is mostly that traffic (random rows
// of a 480k x 50 table, in and out). These kernels do it with one
// memcpy-like pass per row, prefetching the rows ahead:
//
//   jaxcf_gather_rows      out[i, :] = table[ids[i], :]
//   jaxcf_rowwise_adagrad  TorchRec's exact row-wise Adagrad, in place
//   jaxcf_lazy_adamw       Adam on the touched rows only, in place
//
// An update takes the ids of one side (users or items) and every table of
// that side (factors, bias) with its optimiser slots and its per-position
// gradients. It finds the distinct ids once (a sparse set of slots),
// sums each table's gradients over an id's positions in batch order, then
// updates each distinct row once: the arithmetic of jaxcf/sparse.py's XLA
// path. Tables are float32 [n, f]; the Python side is jaxcf/rowkernels.py.

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kAhead = 16;  // rows prefetched ahead of the one in hand

inline void Prefetch(const float* row, int64_t width, bool write) {
  const char* p = reinterpret_cast<const char*>(row);
  for (int64_t b = 0; b < width * 4; b += 64) {
    if (write) {
      __builtin_prefetch(p + b, 1);
    } else {
      __builtin_prefetch(p + b, 0);
    }
  }
}

ffi::Error CheckIds(const int32_t* ids, int64_t batch, int64_t n) {
  for (int64_t i = 0; i < batch; ++i) {
    if (ids[i] < 0 || ids[i] >= n) {
      return ffi::Error::InvalidArgument("row id out of the table's range");
    }
  }
  return ffi::Error::Success();
}

// The distinct ids of a batch, in order of first use, and the slot (index
// into `rows`) of each position. `lookup` maps a row to its slot, trusted
// only when rows[slot] points back at the row (a sparse set): stale entries
// from earlier batches need no clearing. 4 bytes per table row (1/50 of a
// 50-factor table), and no hashing.
struct Distinct {
  std::vector<int32_t> rows, first, slot_of, lookup;
  std::vector<float> sums;  // one table's summed gradients [rows, width]
  std::vector<const float*> source;  // each distinct id's gradient

  void Build(const int32_t* ids, int64_t batch, int64_t n) {
    if (static_cast<int64_t>(lookup.size()) < n) lookup.resize(n, 0);
    slot_of.resize(batch);
    rows.resize(batch);
    first.resize(batch);
    int32_t d = 0;
    for (int64_t i = 0; i < batch; ++i) {
      if (i + kAhead < batch) __builtin_prefetch(&lookup[ids[i + kAhead]], 1);
      const int32_t id = ids[i];
      int32_t slot = lookup[id];
      if (slot >= d || rows[slot] != id) {  // entries are never negative
        slot = d++;
        lookup[id] = slot;
        rows[slot] = id;
        first[slot] = static_cast<int32_t>(i);
      }
      slot_of[i] = slot;
    }
    rows.resize(d);
    first.resize(d);
  }

  // The gradient [width] of each distinct id, summed over its positions in
  // batch order: a pointer into `g` for an id used once (most users), into
  // `sums` for a repeated one.
  const float* const* Sum(const float* g, int64_t width) {
    const int64_t batch = slot_of.size(), d = rows.size();
    sums.resize(d * width);
    source.resize(d);
    for (int64_t k = 0; k < d; ++k) source[k] = g + first[k] * width;
    for (int64_t i = 0; i < batch; ++i) {
      const int32_t slot = slot_of[i];
      if (first[slot] == i) continue;
      float* sum = sums.data() + static_cast<int64_t>(slot) * width;
      if (source[slot] != sum) {  // the second use: start the sum
        std::memcpy(sum, source[slot], width * sizeof(float));
        source[slot] = sum;
      }
      const float* gi = g + i * width;
      for (int64_t j = 0; j < width; ++j) sum[j] += gi[j];
    }
    return source.data();
  }
};

thread_local Distinct distinct;

// Eight running sums, not one: a single float accumulator is a chain of
// `width` dependent adds (the compiler may not reorder float sums), slower
// than the row's own memory traffic when the row is in cache.
inline float SumOfSquares(const float* g, int64_t width) {
  float part[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t j = 0;
  for (; j + 8 <= width; j += 8) {
    for (int p = 0; p < 8; ++p) part[p] += g[j + p] * g[j + p];
  }
  for (; j < width; ++j) part[0] += g[j] * g[j];
  return ((part[0] + part[4]) + (part[1] + part[5])) +
         ((part[2] + part[6]) + (part[3] + part[7]));
}

void AdagradRows(const int32_t* rows, int64_t d, const float* const* grads,
                 int64_t width, const float* h, float* t, float* acc) {
  const float lr = h[0], decay = h[1], eps = h[2];
  for (int64_t k = 0; k < d; ++k) {
    if (k + kAhead < d) {
      const int64_t ahead = rows[k + kAhead];
      Prefetch(t + ahead * width, width, true);
      __builtin_prefetch(acc + ahead, 1);
    }
    const int64_t r = rows[k];
    const float* g = grads[k];
    const float squares = SumOfSquares(g, width);
    const float total = acc[r] + squares / width;
    acc[r] = total;
    const float step = lr / (std::sqrt(total) + eps);
    float* row = t + r * width;
    for (int64_t j = 0; j < width; ++j) row[j] = row[j] * decay - step * g[j];
  }
}

void AdamwRows(const int32_t* rows, int64_t d, const float* const* grads,
               int64_t width, const float* h, float* t, float* mv) {
  const float step_size = h[0], decay = h[1], b1 = h[2], b2 = h[3],
              eps = h[4], correction2 = h[5];
  for (int64_t k = 0; k < d; ++k) {
    if (k + kAhead < d) {
      const int64_t ahead = rows[k + kAhead];
      Prefetch(t + ahead * width, width, true);
      Prefetch(mv + ahead * 2 * width, 2 * width, true);
    }
    const int64_t r = rows[k];
    const float* g = grads[k];
    float* row = t + r * width;
    float* m = mv + r * 2 * width;  // m and v side by side: [n, 2, width]
    float* v = m + width;
    for (int64_t j = 0; j < width; ++j) {
      m[j] = b1 * m[j] + (1.0f - b1) * g[j];
      v[j] = b2 * v[j] + (1.0f - b2) * g[j] * g[j];
      row[j] = row[j] * decay -
               step_size * m[j] / (std::sqrt(v[j] / correction2) + eps);
    }
  }
}

int64_t Width(const ffi::Buffer<ffi::F32>& table) {
  const int64_t n = table.dimensions()[0];
  return n ? table.element_count() / n : 0;
}

ffi::Error GatherRows(ffi::Buffer<ffi::F32> table, ffi::Buffer<ffi::S32> ids,
                      ffi::ResultBuffer<ffi::F32> out) {
  const int64_t batch = ids.element_count(), width = Width(table);
  const int32_t* id = ids.typed_data();
  ffi::Error error = CheckIds(id, batch, table.dimensions()[0]);
  if (error.failure()) return error;
  const float* t = table.typed_data();
  float* o = out->typed_data();
  for (int64_t i = 0; i < batch; ++i) {
    if (i + kAhead < batch) Prefetch(t + id[i + kAhead] * width, width, false);
    std::memcpy(o + i * width, t + static_cast<int64_t>(id[i]) * width,
                width * sizeof(float));
  }
  return ffi::Error::Success();
}

using RowUpdate = void (*)(const int32_t*, int64_t, const float* const*,
                           int64_t, const float*, float*, float*);

// One table of a side: its width, gradients [batch, width] and the output
// (aliased input) buffers of the table and its optimiser slots.
struct SideTable {
  int64_t width;
  const float* grads;
  float* table;
  float* slots;
};

// args: ids [batch], hyper [k], then (table, slots, grads) per table;
// rets: (table, slots) per table, aliasing the inputs (same buffers).
// AdagradRows: hyper = [lr, decay (1 - lr * wd), eps], slots the
// accumulators [n]. AdamwRows: hyper = [lr / (1 - b1^t), decay, b1, b2, eps,
// 1 - b2^t], slots the moments [n, 2, f].
template <RowUpdate update>
ffi::Error UpdateSide(ffi::Buffer<ffi::S32> ids, ffi::Buffer<ffi::F32> hyper,
                      ffi::RemainingArgs args, ffi::RemainingRets rets) {
  const int64_t batch = ids.element_count();
  if (args.size() != 3 * rets.size() / 2 || rets.size() % 2) {
    return ffi::Error::InvalidArgument("expected (table, slots, grads) "
                                       "triples and (table, slots) pairs");
  }
  std::vector<SideTable> tables;
  int64_t n = -1;
  for (size_t k = 0; k < rets.size() / 2; ++k) {
    auto table = args.get<ffi::Buffer<ffi::F32>>(3 * k);
    auto grads = args.get<ffi::Buffer<ffi::F32>>(3 * k + 2);
    auto table_out = rets.get<ffi::Buffer<ffi::F32>>(2 * k);
    auto slots_out = rets.get<ffi::Buffer<ffi::F32>>(2 * k + 1);
    if (!table.has_value() || !grads.has_value() || !table_out.has_value() ||
        !slots_out.has_value()) {
      return ffi::Error::InvalidArgument("row tables must be float32");
    }
    if (n >= 0 && table->dimensions()[0] != n) {
      return ffi::Error::InvalidArgument("one side's tables differ in rows");
    }
    n = table->dimensions()[0];
    tables.push_back({Width(*table), grads->typed_data(),
                      (*table_out)->typed_data(), (*slots_out)->typed_data()});
  }
  if (tables.empty()) return ffi::Error::Success();
  ffi::Error error = CheckIds(ids.typed_data(), batch, n);
  if (error.failure()) return error;
  distinct.Build(ids.typed_data(), batch, n);
  for (const SideTable& t : tables) {
    update(distinct.rows.data(), distinct.rows.size(),
           distinct.Sum(t.grads, t.width), t.width, hyper.typed_data(),
           t.table, t.slots);
  }
  return ffi::Error::Success();
}

auto UpdateBinding() {
  return ffi::Ffi::Bind()
      .Arg<ffi::Buffer<ffi::S32>>()
      .Arg<ffi::Buffer<ffi::F32>>()
      .RemainingArgs()
      .RemainingRets();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxcfGatherRows, GatherRows,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxcfRowwiseAdagrad, UpdateSide<AdagradRows>,
                              UpdateBinding());

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxcfLazyAdamw, UpdateSide<AdamwRows>,
                              UpdateBinding());
