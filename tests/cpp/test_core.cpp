// GoogleTest tests of fastpaper/core.h and fastpaper/status.h: build information and error state.
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <thread>

#include "fastpaper/bfp.h"
#include "fastpaper/core.h"

namespace {

using fastpaper::Status;

TEST(Core, VersionMatchesTheGeneratedHeader) {
  ASSERT_NE(fastpaper::version(), nullptr);
  EXPECT_STRNE(fastpaper::version(), "");
  // The header the caller compiled against and the library it runs with must agree.
  EXPECT_STREQ(fastpaper::version(), FASTPAPER_VERSION);
}

TEST(Core, CudaBuildInformationIsConsistent) {
  EXPECT_EQ(fastpaper::cuda_built(), FASTPAPER_HAS_CUDA != 0);
  ASSERT_NE(fastpaper::cuda_architectures(), nullptr);
  EXPECT_EQ(std::strlen(fastpaper::cuda_architectures()) > 0, fastpaper::cuda_built());
}

TEST(Core, CudaDeviceQueriesNeverFail) {
  const int n = fastpaper::cuda_device_count();
  EXPECT_GE(n, 0);
  if (!fastpaper::cuda_built()) {
    EXPECT_EQ(n, 0);
  }
  EXPECT_EQ(fastpaper::cuda_device_count(), n);  // stable; the first call must not leave error state

  char name[64];
  int major = -1, minor = -1;
  EXPECT_FALSE(fastpaper::cuda_device_info(-1, name, sizeof name, &major, &minor));
  EXPECT_FALSE(fastpaper::cuda_device_info(n, name, sizeof name, &major, &minor));
  EXPECT_FALSE(fastpaper::cuda_device_info(0, nullptr, 64, &major, &minor));
  EXPECT_FALSE(fastpaper::cuda_device_info(0, name, 0, &major, &minor));
  EXPECT_FALSE(fastpaper::cuda_device_info(0, name, sizeof name, nullptr, &minor));
  EXPECT_FALSE(fastpaper::cuda_device_info(0, name, sizeof name, &major, nullptr));
  for (int i = 0; i < n; ++i) {
    ASSERT_TRUE(fastpaper::cuda_device_info(i, name, sizeof name, &major, &minor)) << i;
    EXPECT_GT(std::strlen(name), 0u);
    EXPECT_LT(std::strlen(name), sizeof name);
    EXPECT_GE(major, 1);
    EXPECT_GE(minor, 0);
  }
  // A one-byte buffer still gets its terminator.
  if (n > 0) {
    char tiny[1] = {'x'};
    ASSERT_TRUE(fastpaper::cuda_device_info(0, tiny, 1, &major, &minor));
    EXPECT_EQ(tiny[0], '\0');
  }
}

TEST(Core, StatusNames) {
  EXPECT_STREQ(fastpaper::status_name(Status::ok), "ok");
  EXPECT_STREQ(fastpaper::status_name(Status::invalid_argument), "invalid_argument");
  EXPECT_STREQ(fastpaper::status_name(Status::not_built_with_cuda), "not_built_with_cuda");
  EXPECT_STREQ(fastpaper::status_name(Status::cuda_error), "cuda_error");
  EXPECT_STREQ(fastpaper::status_name(static_cast<Status>(77)), "unknown");
  EXPECT_STREQ(fastpaper::status_name(static_cast<Status>(-1)), "unknown");
}

// last_error() is per thread: a failure on one thread must not show up on another.
TEST(Core, LastErrorIsThreadLocal) {
  namespace bfp = fastpaper::bfp;
  ASSERT_EQ(bfp::check_format(bfp::BFP12), Status::ok);
  const std::string before = fastpaper::last_error();
  std::string other;
  std::thread t([&] {
    EXPECT_EQ(bfp::check_format(bfp::Format{48, 4, bfp::Element::sign_magnitude}), Status::invalid_argument);
    other = fastpaper::last_error();
  });
  t.join();
  EXPECT_NE(other.find("48"), std::string::npos) << other;  // the message names the bad block
  EXPECT_EQ(std::string(fastpaper::last_error()), before);

  EXPECT_EQ(bfp::check_format(bfp::Format{64, 1, bfp::Element::sign_magnitude}), Status::invalid_argument);
  EXPECT_STRNE(fastpaper::last_error(), "");
}

}  // namespace
