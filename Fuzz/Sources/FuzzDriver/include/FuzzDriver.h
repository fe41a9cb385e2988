#ifndef CKSTORE_FUZZ_DRIVER_H
#define CKSTORE_FUZZ_DRIVER_H
#include <stddef.h>
#include <stdint.h>

/// Runs libFuzzer with `callback` as the fuzz target (LLVMFuzzerRunDriver). SwiftPM links every
/// executable with `main` aliased to `<Module>_main`, so libFuzzer's own main cannot be used; each fuzz
/// target defines `<Module>_main` and calls this.
int ckstore_run_fuzzer(int argc, char **argv, int (*callback)(const uint8_t *data, size_t size));
#endif
