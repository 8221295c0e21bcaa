// fastpaper._core: build and machine information (fastpaper/core.h).
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>

#include "fastpaper/core.h"

namespace nb = nanobind;

NB_MODULE(_core, m) {
  m.def("version", [] { return std::string(fastpaper::version()); });
  m.def("cuda_built", &fastpaper::cuda_built);
  m.def("cuda_architectures", [] { return std::string(fastpaper::cuda_architectures()); });
  m.def("cuda_device_count", &fastpaper::cuda_device_count);
  m.def("cuda_device_info", [](int index) {
    char name[256];
    int major = 0, minor = 0;
    if (!fastpaper::cuda_device_info(index, name, sizeof name, &major, &minor)) {
      throw nb::index_error("no CUDA device with that index");
    }
    return std::make_tuple(std::string(name), major, minor);
  });
}
