/* Linked into the wheel's ckstore binary only (scripts/build-wheel.sh).
 *
 * Three symbols would raise the binary's glibc floor above 2.34, and the link wraps each (--wrap):
 * - hypot and hypotf got a new symbol version in glibc 2.35 (the same functions without SVID error
 *   handling), which the toolchain's static Foundation references: the wrappers call the versions every
 *   glibc has had (2.2.5 on x86_64, 2.17 on aarch64);
 * - arc4random, new in glibc 2.36, which the static libstdc++ of GCC 12 calls for std::random_device: the
 *   wrapper reads the kernel's generator through getrandom(2) (glibc 2.25), as arc4random itself does. */
#include <math.h>
#include <sys/random.h>

/* The first version of each symbol: glibc's baseline for the architecture. */
#if defined(__aarch64__)
#define CKSTORE_GLIBC_BASE "GLIBC_2.17"
#else
#define CKSTORE_GLIBC_BASE "GLIBC_2.2.5"
#endif
__asm__(".symver ckstore_hypot_compat, hypot@" CKSTORE_GLIBC_BASE);
__asm__(".symver ckstore_hypotf_compat, hypotf@" CKSTORE_GLIBC_BASE);
double ckstore_hypot_compat(double x, double y);
float ckstore_hypotf_compat(float x, float y);

double __wrap_hypot(double x, double y) { return ckstore_hypot_compat(x, y); }
float __wrap_hypotf(float x, float y) { return ckstore_hypotf_compat(x, y); }

unsigned int __wrap_arc4random(void) {
    unsigned int value;
    while (getrandom(&value, sizeof value, 0) != (ssize_t)sizeof value) {
    }
    return value;
}
