#include "tests/backend_ops.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <memory>

#include "backends/cpu/cpu_backend.h"
#include "backends/cpu/cpu_features.h"
#include "backends/cpu/ops_ref.h"
#include "core/errors.h"

namespace llmcore {
namespace {

constexpr int kGuard = 16;
constexpr float kSentinel = 1234.5f;

struct Rand {
  uint64_t s;
  explicit Rand(uint64_t seed) : s(seed * 2654435761u + 1) {}
  float next() {  // uniform in [-1, 1)
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    return float(int32_t(s >> 32)) / 2147483648.0f;
  }
  size_t index(size_t n) {  // uniform in [0, n)
    next();
    return size_t(s >> 33) % n;
  }
  std::vector<float> vec(size_t n, float scale = 1.0f) {
    std::vector<float> v(n);
    for (auto& x : v) x = next() * scale;
    return v;
  }
};

// A backend buffer with guard values on both sides; fetch() checks them.
class Guarded {
 public:
  Guarded(Backend& be, const std::vector<float>& init) : be_(be), n_(init.size()) {
    std::vector<float> host(n_ + 2 * kGuard, kSentinel);
    std::copy(init.begin(), init.end(), host.begin() + kGuard);
    p_ = be.alloc(host.size());
    be.upload(p_, host.data(), host.size());
  }
  ~Guarded() { be_.release(p_); }
  float* get() { return p_ + kGuard; }
  // Returns the contents; false in *guards_ok when anything outside was written.
  std::vector<float> fetch(bool* guards_ok) {
    std::vector<float> host(n_ + 2 * kGuard);
    be_.download(host.data(), p_, host.size());
    for (int i = 0; i < kGuard; i++)
      if (host[size_t(i)] != kSentinel || host[n_ + kGuard + size_t(i)] != kSentinel) *guards_ok = false;
    return std::vector<float>(host.begin() + kGuard, host.end() - kGuard);
  }

 private:
  Backend& be_;
  size_t n_;
  float* p_;
};

void compare(OpCase& c, const std::vector<float>& got, const std::vector<float>& want, bool guards_ok) {
  double max_ref = 0, max_diff = 0;
  bool finite = true;
  for (size_t i = 0; i < want.size(); i++) {
    if (!std::isfinite(got[i])) finite = false;
    max_ref = std::max(max_ref, double(std::fabs(want[i])));
    max_diff = std::max(max_diff, double(std::fabs(got[i] - want[i])));
  }
  c.max_err = std::max(c.max_err, max_diff / std::max(1.0, max_ref));
  c.ok = finite && guards_ok && c.max_err <= c.tol;
  if (!finite) c.note = "NaN/Inf in output";
  else if (!guards_ok) c.note = "wrote outside its output";
  else if (!c.ok) c.note = "error above tolerance";
}

std::vector<float> round_to(const std::vector<float>& v, DType t) {
  std::vector<float> out(v.size());
  for (size_t i = 0; i < v.size(); i++)
    out[i] = t == DType::F32 ? v[i] : t == DType::BF16 ? bf16_to_f32(f32_to_bf16(v[i])) : f16_to_f32(f32_to_f16(v[i]));
  return out;
}

// Stored bytes of W (N, K) in dtype t, in (K, N) order when kn.
std::vector<uint8_t> store_weight(const std::vector<float>& W, int64_t N, int64_t K, DType t, bool kn) {
  std::vector<uint8_t> bytes(size_t(N * K) * dtype_size(t));
  for (int64_t n = 0; n < N; n++)
    for (int64_t k = 0; k < K; k++) {
      const size_t i = size_t(kn ? k * N + n : n * K + k);
      const float v = W[size_t(n * K + k)];
      if (t == DType::F32) std::memcpy(bytes.data() + 4 * i, &v, 4);
      else {
        const uint16_t h = t == DType::BF16 ? f32_to_bf16(v) : f32_to_f16(v);
        std::memcpy(bytes.data() + 2 * i, &h, 2);
      }
    }
  return bytes;
}

void test_layernorm(Backend& be, const std::string& name, std::vector<OpCase>& out, Rand& rng) {
  for (int M : {1, 7, 33})
    for (int64_t C : {1, 17, 64, 200, 768}) {
      OpCase c{name, "layernorm", "M=" + std::to_string(M) + " C=" + std::to_string(C)};
      c.tol = 1e-5;
      auto x = rng.vec(size_t(M * C), 3.0f), g = rng.vec(size_t(C)), b = rng.vec(size_t(C));
      std::vector<float> want(x.size());
      ref::layernorm(x.data(), M, C, g.data(), b.data(), 1e-5f, want.data());
      Guarded dx(be, x), dg(be, g), db(be, b), dy(be, std::vector<float>(x.size(), 0.f));
      be.layernorm(dx.get(), M, C, dg.get(), db.get(), 1e-5f, dy.get());
      bool ok = true;
      compare(c, dy.fetch(&ok), want, ok);
      out.push_back(c);
    }
}

void test_matmul(Backend& be, const std::string& name, bool bf16_dot, bool quick,
                 std::vector<OpCase>& out, Rand& rng) {
  struct Shape { int M; int64_t N, K; };
  std::vector<Shape> shapes = {{1, 17, 65}, {7, 33, 64}, {33, 50, 200}, {1, 2304, 768}, {5, 1, 3}};
  if (!quick) shapes.insert(shapes.end(), {{13, 1003, 768}, {100, 31, 1}, {512, 96, 768}, {32, 3072, 768}});
  const char* ep_names[] = {"store", "gelu", "addto"};
  for (const Shape& s : shapes)
    for (DType t : {DType::F32, DType::F16, DType::BF16})
      for (bool kn : {true, false})
        for (Epilogue ep : {Epilogue::Store, Epilogue::Gelu, Epilogue::AddTo}) {
          OpCase c{name, "matmul", "M=" + std::to_string(s.M) + " N=" + std::to_string(s.N) + " K=" +
                                       std::to_string(s.K) + " " + dtype_name(t) + (kn ? " kn " : " nk ") +
                                       ep_names[int(ep)]};
          // vdpbf16ps rounds activations to bf16 too: its error is that of bf16 inputs.
          c.tol = (bf16_dot && t == DType::BF16) ? 2e-2 : 2e-5;
          const float w_scale = 1.0f / std::sqrt(float(s.K));
          auto x = rng.vec(size_t(s.M * s.K)), bias = rng.vec(size_t(s.N));
          auto W = round_to(rng.vec(size_t(s.N * s.K), w_scale), t);
          auto y0 = rng.vec(size_t(s.M * s.N));
          std::vector<float> want = y0;
          ref::matmul(x.data(), s.K, s.M, W.data(), s.N, s.K, bias.data(), want.data(), ep);
          auto stored = store_weight(W, s.N, s.K, t, kn);
          auto w = be.prepare_weight(WeightView{stored.data(), t, s.N, s.K, kn, "test"}, t);
          Guarded dx(be, x), db(be, bias), dy(be, y0);
          be.matmul(dx.get(), s.K, s.M, *w, db.get(), dy.get(), ep);
          bool ok = true;
          compare(c, dy.fetch(&ok), want, ok);
          out.push_back(c);
        }
}

// The cache's elements as floats (f16 widened), for comparing two caches.
std::vector<float> kv_elements(const std::vector<float>& pool, DType dtype) {
  if (dtype == DType::F32) return pool;
  std::vector<uint16_t> h(pool.size() * 2);
  std::memcpy(h.data(), pool.data(), h.size() * 2);
  std::vector<float> f(h.size());
  for (size_t i = 0; i < h.size(); i++) f[i] = f16_to_f32(h[i]);
  return f;
}

// kv_store + attention over a paged cache (fp32 or f16 elements) holding `past` random positions
// per sequence.
// The AVX-512 attention kernel is the AVX2 one with wider FMA loops and must give the same
// values: the outputs of cpu/avx2 per case (every family draws the same inputs, Rand(42)).
// variant, appended to the op names, marks a second run of a family on the same inputs with
// its other decode walk (cpu::AttentionTuning), held to the same bits.
std::map<std::string, std::vector<float>> g_avx2_attention;

void test_attention(Backend& be, const std::string& name, bool quick, DType kv_dtype,
                    std::vector<OpCase>& out, Rand& rng, const std::string& variant = "") {
  const bool f16 = kv_dtype == DType::F16;
  struct Case { int NH; int64_t HS; std::vector<std::pair<int, int>> seqs; };  // (past, n_new)
  std::vector<Case> cases = {
      {1, 1, {{0, 1}}},           {2, 8, {{0, 5}}},
      {3, 12, {{15, 1}, {16, 1}, {17, 3}}},
      {4, 64, {{0, 37}, {40, 1}, {3, 16}}},
      {2, 33, {{31, 2}}},
      // head sizes that are multiples of 8 but not of 64 (pair and single tiles of 32/16/8)
      {2, 16, {{5, 3}}},          {3, 24, {{0, 19}}},
      {2, 32, {{9, 6}, {0, 1}}},  {1, 128, {{7, 9}, {0, 2}}},
      {2, 104, {{13, 4}}},
      // decode tasks of several heads (CpuBackend::attention, 2 threads): 5 heads in groups of
      // 2, 2, 1; 12 heads in groups of 4 next to a prefill sequence of one head per task
      {5, 8, {{3, 1}, {17, 1}, {0, 1}, {30, 1}}},
      {12, 16, {{5, 1}, {20, 1}, {33, 1}, {0, 40}}},
      // decode rows only (the block walk's shares and next-task prefetch): 2 heads per task
      {4, 32, {{3, 1}, {17, 1}, {40, 1}, {0, 1}}},
  };
  if (!quick) cases.push_back({2, 64, {{0, 1024}}}), cases.push_back({2, 64, {{1023, 1}, {0, 1}}});
  const int L = 2, layer = 1;
  for (const Case& k : cases) {
    const int64_t C = k.NH * k.HS;
    std::string shape = std::string(f16 ? "kv f16 " : "") + "NH=" + std::to_string(k.NH) + " HS=" + std::to_string(k.HS) + " (past,new)=";
    int M = 0, n_blocks = 0;
    for (auto [past, n] : k.seqs) {
      shape += "(" + std::to_string(past) + "," + std::to_string(n) + ")";
      M += n;
      n_blocks += (past + n + kBlockTokens - 1) / kBlockTokens;
    }
    const size_t block_elems = size_t(L) * 2 * kBlockTokens * C;
    const size_t block_floats = block_elems * dtype_size(kv_dtype) / sizeof(float);
    // Blocks are handed out in a shuffled order, as a real cache would after reuse.
    std::vector<int32_t> order(static_cast<size_t>(n_blocks));
    for (int i = 0; i < n_blocks; i++) order[size_t(i)] = i;
    for (int i = n_blocks - 1; i > 0; i--) std::swap(order[size_t(i)], order[rng.index(size_t(i + 1))]);
    std::vector<std::vector<int32_t>> tables;
    std::vector<AttnSeq> seqs;
    int row = 0, next = 0;
    for (auto [past, n] : k.seqs) {
      std::vector<int32_t> t;
      for (int b = 0; b < (past + n + kBlockTokens - 1) / kBlockTokens; b++) t.push_back(order[size_t(next++)]);
      tables.push_back(t);
      seqs.push_back(AttnSeq{row, n, past, nullptr});
      row += n;
    }
    for (size_t i = 0; i < seqs.size(); i++) seqs[i].blocks = tables[i].data();
    auto pool_init = rng.vec(block_elems * size_t(n_blocks));
    if (f16) {  // the same random values, as f16 elements
      std::vector<uint16_t> h(pool_init.size());
      for (size_t i = 0; i < h.size(); i++) h[i] = f32_to_f16(pool_init[i]);
      pool_init.assign(block_floats * size_t(n_blocks), 0.f);
      std::memcpy(pool_init.data(), h.data(), h.size() * 2);
    }
    auto qkv = rng.vec(size_t(M) * 3 * size_t(C), 2.0f);

    // Reference on host memory.
    std::vector<float> ref_pool = pool_init;
    std::vector<void*> ref_ptrs;
    for (int b = 0; b < n_blocks; b++) ref_ptrs.push_back(ref_pool.data() + size_t(b) * block_floats);
    KvView ref_kv{ref_ptrs.data(), C, k.NH, kv_dtype};
    std::vector<float> want(size_t(M * C));
    ref::kv_store(qkv.data(), seqs.data(), int(seqs.size()), ref_kv, layer);
    ref::attention(qkv.data(), seqs.data(), int(seqs.size()), ref_kv, layer, want.data());

    Guarded dpool(be, pool_init), dqkv(be, qkv), dout(be, std::vector<float>(size_t(M * C), 0.f));
    std::vector<void*> ptrs;
    for (int b = 0; b < n_blocks; b++) ptrs.push_back(dpool.get() + size_t(b) * block_floats);
    KvView kv{ptrs.data(), C, k.NH, kv_dtype};
    be.kv_store(dqkv.get(), seqs.data(), int(seqs.size()), kv, layer);
    be.attention(dqkv.get(), seqs.data(), int(seqs.size()), kv, layer, dout.get());

    OpCase store{name, std::string("kv_store") + variant, shape};
    store.tol = 0;
    bool ok = true;
    compare(store, kv_elements(dpool.fetch(&ok), kv_dtype), kv_elements(ref_pool, kv_dtype), ok);
    out.push_back(store);
    OpCase att{name, std::string("attention") + variant, shape};
    att.tol = 1e-5;
    ok = true;
    const std::vector<float> batched = dout.fetch(&ok);
    compare(att, batched, want, ok);
    out.push_back(att);
    if (name == "cpu/avx2") {
      g_avx2_attention[shape] = batched;
    } else if (name == "cpu/avx512" || name == "cpu/amx") {
      auto it = g_avx2_attention.find(shape);
      if (it != g_avx2_attention.end()) {
        OpCase same{name, std::string("attention==avx2") + variant, shape};
        same.tol = 0;
        compare(same, batched, it->second, true);
        out.push_back(same);
      }
    }

    // The fused op the forward pass calls: the same cache and the same bits as the two ops.
    Guarded fpool(be, pool_init), fout(be, std::vector<float>(size_t(M * C), 0.f));
    std::vector<void*> fptrs;
    for (int b = 0; b < n_blocks; b++) fptrs.push_back(fpool.get() + size_t(b) * block_floats);
    be.store_and_attend(dqkv.get(), seqs.data(), int(seqs.size()), KvView{fptrs.data(), C, k.NH, kv_dtype},
                        layer, fout.get());
    OpCase fused_store{name, std::string("store_and_attend (cache)") + variant, shape};
    fused_store.tol = 0;
    ok = true;
    compare(fused_store, kv_elements(fpool.fetch(&ok), kv_dtype), kv_elements(ref_pool, kv_dtype), ok);
    out.push_back(fused_store);
    OpCase fused{name, std::string("store_and_attend") + variant, shape};
    fused.tol = 0;
    ok = true;
    compare(fused, fout.fetch(&ok), batched, ok);
    out.push_back(fused);

    // Batch invariance: every row again, alone (one new token over the same cache, as decode
    // would), must give the very same bits as in the batch.
    Guarded dalone(be, std::vector<float>(size_t(M * C), 0.f));
    for (const AttnSeq& s : seqs)
      for (int i = 0; i < s.n_new; i++) {
        const AttnSeq one{s.row + i, 1, s.past + i, s.blocks};
        be.attention(dqkv.get(), &one, 1, kv, layer, dalone.get());
      }
    OpCase inv{name, std::string("attention-alone==batched") + variant, shape};
    inv.tol = 0;
    ok = true;
    compare(inv, dalone.fetch(&ok), batched, ok);
    out.push_back(inv);
  }
}

// f16 cache: values beyond the f16 range are stored as +-65504 (not inf, which would turn a
// softmax into NaN), exactly as the reference stores them.
void test_kv_store_f16_range(Backend& be, const std::string& name, std::vector<OpCase>& out) {
  const int NH = 1;
  const int64_t HS = 8, C = NH * HS;
  const std::vector<float> kv_vals = {1e6f, -1e6f, 70000.f, 65519.f, 65520.f, -65520.f, 1e-8f, -0.f,
                                      3.14159f, 65504.f, -7e4f, 2.5e5f, 1.0f, -1.0f, 1e30f, -1e30f};
  std::vector<float> qkv(size_t(3 * C), 0.5f);
  for (int64_t i = 0; i < 2 * C; i++) qkv[size_t(C + i)] = kv_vals[size_t(i)];
  const size_t block_floats = size_t(2 * kBlockTokens * C) * 2 / 4;  // one layer of f16
  std::vector<float> zero(block_floats, 0.f);
  std::vector<float> ref_pool = zero;
  void* ref_ptr[1] = {ref_pool.data()};
  const int32_t table[1] = {0};
  const AttnSeq seq{0, 1, 5, table};
  ref::kv_store(qkv.data(), &seq, 1, KvView{ref_ptr, C, NH, DType::F16}, 0);
  Guarded dpool(be, zero), dqkv(be, qkv);
  void* ptr[1] = {dpool.get()};
  be.kv_store(dqkv.get(), &seq, 1, KvView{ptr, C, NH, DType::F16}, 0);
  OpCase c{name, "kv_store", "kv f16 out of range (+-1e6, 65520, 1e30)"};
  c.tol = 0;
  bool ok = true;
  const std::vector<float> got = kv_elements(dpool.fetch(&ok), DType::F16);
  const std::vector<float> want = kv_elements(ref_pool, DType::F16);
  compare(c, got, want, ok);
  float largest = 0;
  for (float v : got) largest = std::max(largest, std::fabs(v));
  if (c.ok && largest != 65504.f) {
    c.ok = false;
    c.note = "largest stored value " + std::to_string(largest) + ", expected 65504";
  }
  out.push_back(c);
}

void test_small_ops(Backend& be, const std::string& name, std::vector<OpCase>& out, Rand& rng) {
  const int M = 5, V = 50, P = 20;
  const int64_t C = 17;
  std::vector<int32_t> tokens = {0, 49, 7, 7, 23}, positions = {0, 1, 2, 19, 4};
  auto wte = rng.vec(size_t(V * C)), wpe = rng.vec(size_t(P * C));
  Guarded dwte(be, wte), dwpe(be, wpe);
  bool ok = true;
  // wte as a prepared weight in each dtype (the tied LM head), as stored: exact rows
  for (DType t : {DType::F32, DType::F16, DType::BF16}) {
    const auto stored = store_weight(wte, V, C, t, false);
    auto w = be.prepare_weight(WeightView{stored.data(), t, V, C, false, "wte"}, t);
    const auto rounded = round_to(wte, t);
    std::vector<float> want(size_t(M * C));
    ref::embed(tokens.data(), positions.data(), M, C, rounded.data(), wpe.data(), want.data());
    Guarded dout(be, std::vector<float>(want.size(), 0.f));
    be.embed(tokens.data(), positions.data(), M, C, *w, dwpe.get(), dout.get());
    OpCase e{name, "embed", std::string("M=5 C=17 V=50 ") + dtype_name(t)};
    e.tol = 0;
    ok = true;
    compare(e, dout.fetch(&ok), want, ok);
    out.push_back(e);
  }

  std::vector<int32_t> rows = {4, 0, 2};
  std::vector<float> want_rows(3 * size_t(C));
  ref::gather_rows(wte.data(), rows.data(), 3, C, want_rows.data());
  Guarded drows(be, std::vector<float>(want_rows.size(), 0.f));
  be.gather_rows(dwte.get(), rows.data(), 3, C, drows.get());
  OpCase g{name, "gather", "n=3 C=17"};
  g.tol = 0;
  ok = true;
  compare(g, drows.fetch(&ok), want_rows, ok);
  out.push_back(g);

  // logsumexp: vocabulary-sized rows, odd lengths (vector tails), a -inf entry, and the special
  // rows (NaN, +inf, all -inf) the contract names.
  for (int64_t n : {int64_t(1), int64_t(7), int64_t(50257)}) {
    const int R = 3;
    auto x = rng.vec(size_t(R * n), 20.0f);
    if (n > 1) x[0] = -INFINITY;
    std::vector<double> want(R), got(R);
    ref::logsumexp_rows(x.data(), R, n, want.data());
    Guarded dx(be, x);
    be.logsumexp_rows(dx.get(), R, n, got.data());
    OpCase l{name, "logsumexp", "rows=3 n=" + std::to_string(n)};
    l.tol = 1e-6;  // absolute: the error a log-probability gets from it
    for (int r = 0; r < R; r++) l.max_err = std::max(l.max_err, std::fabs(got[size_t(r)] - want[size_t(r)]));
    ok = true;
    dx.fetch(&ok);
    l.ok = ok && l.max_err <= l.tol;
    if (!l.ok) l.note = ok ? "error above tolerance" : "wrote its input";
    out.push_back(l);
  }
  {
    const int64_t n = 19;
    std::vector<float> x(size_t(4 * n), 1.0f);
    x[3] = NAN;                                       // row 0: NaN
    x[size_t(n) + 17] = INFINITY;                     // row 1: +inf
    for (int64_t j = 0; j < n; j++) x[size_t(2 * n + j)] = -INFINITY;  // row 2: all -inf
    x[size_t(3 * n) + 16] = NAN;                      // row 3: NaN in the vector tail
    Guarded dx(be, x);
    std::vector<double> got(4);
    be.logsumexp_rows(dx.get(), 4, n, got.data());
    OpCase l{name, "logsumexp", "NaN, +inf, all -inf rows"};
    l.tol = 0;
    l.ok = std::isnan(got[0]) && got[1] == INFINITY && got[2] == -INFINITY && std::isnan(got[3]);
    if (!l.ok) l.note = "special rows not as the contract says";
    out.push_back(l);
  }

  Guarded dz(be, rng.vec(37));
  be.zero(dz.get(), 37);
  OpCase z{name, "zero", "n=37"};
  z.tol = 0;
  ok = true;
  compare(z, dz.fetch(&ok), std::vector<float>(37, 0.f), ok);
  out.push_back(z);

  // KV cache chunks must come zero-filled (attention reads a block's unwritten slots), also
  // when a written chunk was released just before: sizes below, at and past a 2 MiB page.
  for (size_t n : {size_t(1000), size_t(1) << 19, (size_t(3) << 19) + 5}) {
    OpCase c{name, "alloc_cache", "n=" + std::to_string(n) + ", twice"};
    c.tol = 0;
    std::vector<float> got(n);
    float* p = be.alloc_cache(n);
    be.download(got.data(), p, n);
    const std::vector<float> junk = rng.vec(n);
    be.upload(p, junk.data(), n);
    be.release_cache(p, n);
    float* q = be.alloc_cache(n);
    std::vector<float> again(n);
    be.download(again.data(), q, n);
    be.release_cache(q, n);
    got.insert(got.end(), again.begin(), again.end());
    compare(c, got, std::vector<float>(2 * n, 0.f), true);
    out.push_back(c);
  }
}

}  // namespace

std::vector<OpCase> run_backend_ops(bool quick) {
  std::vector<OpCase> out;
  g_avx2_attention.clear();
  for (cpu::Isa isa : {cpu::Isa::Scalar, cpu::Isa::Avx2, cpu::Isa::Avx512, cpu::Isa::Amx}) {
    const std::string name = std::string("cpu/") + cpu::isa_name(isa);
    if (!cpu::isa_supported(isa)) {
      OpCase c{name, "*", "-"};
      c.supported = false;
      c.note = "this CPU lacks the instructions";
      out.push_back(c);
      continue;
    }
    cpu::CpuBackend be(2, isa);
    const bool bf16_dot = cpu::bf16_dot_product(isa);
    Rand rng(42);
    try {
      test_layernorm(be, name, out, rng);
      test_matmul(be, name, bf16_dot, quick, out, rng);
      const Rand before_attention = rng;
      test_attention(be, name, quick, DType::F32, out, rng);
      const Rand before_f16 = rng;
      test_attention(be, name, quick, DType::F16, out, rng);
      if (isa >= cpu::Isa::Avx512) {  // the other decode walk, on the same inputs
        Rand again = before_attention, again_f16 = before_f16;
        const cpu::AttentionTuning mine = be.attn_tuning();
        cpu::AttentionTuning other;
        other.set_walks(!mine.block_walk(DType::F32));
        be.set_attention_tuning(other);
        test_attention(be, name, quick, DType::F32, out, again, other.block_walk_f32 ? " (block walk)" : " (head walk)");
        other.set_walks(!mine.block_walk(DType::F16));
        be.set_attention_tuning(other);
        test_attention(be, name, quick, DType::F16, out, again_f16, other.block_walk_f16 ? " (block walk)" : " (head walk)");
        be.set_attention_tuning(cpu::attention_tuning());
      }
      test_kv_store_f16_range(be, name, out);
      test_small_ops(be, name, out, rng);
    } catch (const std::exception& e) {
      OpCase c{name, "*", "-"};
      c.note = std::string("threw: ") + e.what();
      out.push_back(c);
    }
  }
  return out;
}

}  // namespace llmcore
