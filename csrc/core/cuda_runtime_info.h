// Internal: device queries implemented in cuda/core/device_info.cu (CUDA builds only).
#pragma once

namespace fastpaper::detail {
int cuda_runtime_device_count();
bool cuda_runtime_device_info(int index, char* name, int name_len, int* major, int* minor);
}  // namespace fastpaper::detail
