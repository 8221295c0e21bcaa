// Default sanitizer options compiled into the test binaries of a FASTPAPER_SANITIZE build.
//
// Compiled in rather than set through the environment so that every way of running the tests
// (ctest, gtest_discover_tests listing them at ctest time, the binary by hand) gets them;
// ASAN_OPTIONS / UBSAN_OPTIONS in the environment still override them. The runtime looks these
// symbols up dynamically, so they must stay visible despite the hidden visibility preset.
#define FP_SANITIZER_HOOK extern "C" __attribute__((visibility("default"), used)) const char*

FP_SANITIZER_HOOK __asan_default_options() {
  return "detect_leaks=1:detect_stack_use_after_return=1:strict_string_checks=1:"
         "check_initialization_order=1:strict_init_order=1";
}

FP_SANITIZER_HOOK __ubsan_default_options() { return "print_stacktrace=1:halt_on_error=1"; }
