// fastpaper core: status codes, devices, dtypes and the export macro shared by every area.
//
// The C++ API never throws and never aborts on bad input: every entry point validates its
// arguments and returns a Status; last_error() holds a human-readable explanation of the last
// failure on the calling thread.
#pragma once

#include <cstdint>

#if defined(_WIN32)
#  if defined(FASTPAPER_BUILDING_CORE)
#    define FASTPAPER_API __declspec(dllexport)
#  else
#    define FASTPAPER_API __declspec(dllimport)
#  endif
#else
#  define FASTPAPER_API __attribute__((visibility("default")))
#endif

namespace fastpaper {

enum class Status : int32_t {
  ok = 0,
  invalid_argument = 1,    // a shape, size, pointer or option is outside what the op accepts
  not_built_with_cuda = 2, // a CUDA device was requested from a CPU-only build
  cuda_error = 3,          // the CUDA runtime reported an error (see last_error())
};

// Where the pointers passed to an op live. For Device::cuda the op is enqueued on `stream`
// (a cudaStream_t passed as void*; nullptr is the legacy default stream) and returns without
// synchronizing.
enum class Device : int32_t { cpu = 0, cuda = 1 };

// Element types of dense tensors crossing the API.
enum class DType : int32_t { float32 = 0, float16 = 1, bfloat16 = 2 };

FASTPAPER_API const char* status_name(Status s);
// Explanation of the last non-ok Status returned on this thread ("" when none).
FASTPAPER_API const char* last_error();

}  // namespace fastpaper
