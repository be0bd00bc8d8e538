// test-backend-ops: every op of every backend (here: each CPU kernel family the machine can
// run) against the plain reference in ops_ref.cpp, on random inputs and awkward shapes, with
// guard values around every output to catch out-of-bounds writes and a NaN/Inf check. Run from
// jest through the addon (test/backend-ops.test.ts) and as the standalone `backend_ops_test`.
#pragma once
#include <string>
#include <utility>
#include <vector>

namespace llmcore {

struct OpCase {
  OpCase() = default;
  OpCase(std::string backend_, std::string op_, std::string shape_)
      : backend(std::move(backend_)), op(std::move(op_)), shape(std::move(shape_)) {}
  std::string backend;  // e.g. "cpu/avx2"
  std::string op;       // e.g. "matmul"
  std::string shape;    // e.g. "M=33 N=17 K=65 bf16 kn gelu"
  double max_err = 0;   // max |fast - ref| / max(1, max |ref|)
  double tol = 0;
  bool supported = true;
  bool ok = false;
  std::string note;     // why it failed, when it failed
};

// quick: fewer shapes (for the jest run); full: adds the context-maximum cases.
std::vector<OpCase> run_backend_ops(bool quick);

}  // namespace llmcore
