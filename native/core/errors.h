// Errors inside the core are C++ exceptions of one type carrying a stable code; the N-API glue
// turns them into JS errors with `code` set, and the facade maps codes to error classes.
// Nothing in the core calls exit() or abort().
#pragma once
#include <stdexcept>
#include <string>

namespace llmcore {

// Stable codes shared with lib/errors.ts.
inline constexpr const char* E_MODEL_FORMAT = "E_MODEL_FORMAT";  // a checkpoint file is wrong
inline constexpr const char* E_IO = "E_IO";                      // a file cannot be read
inline constexpr const char* E_OPTION = "E_OPTION";              // a caller-supplied value is out of range
inline constexpr const char* E_DISPOSED = "E_DISPOSED";          // the model was disposed
inline constexpr const char* E_BACKEND = "E_BACKEND";            // a backend cannot start
inline constexpr const char* E_OOM = "E_OOM";                    // an allocation failed
inline constexpr const char* E_INTERNAL = "E_INTERNAL";          // a bug: an invariant broke

class Error : public std::runtime_error {
 public:
  // `message` is prefixed with what failed, e.g. "[safetensors] model.safetensors: ...".
  Error(const char* code, const std::string& message) : std::runtime_error(message), code_(code) {}
  const char* code() const { return code_; }

 private:
  const char* code_;
};

}  // namespace llmcore
