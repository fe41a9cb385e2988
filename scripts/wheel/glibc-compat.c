/* Linked into the self-contained ckstore binary (scripts/static-ckstore.sh), which links against glibc
 * 2.28's symbols: the static Swift runtime, Foundation and GCC 12's libstdc++ reference five newer ones.
 * The link wraps three (--wrap), and this file defines the others:
 * - hypot and hypotf got a new symbol version in glibc 2.35 (the same functions without SVID error
 *   handling), which the toolchain's static Foundation references: the wrappers call the versions every
 *   glibc has had (2.2.5 on x86_64, 2.17 on aarch64);
 * - arc4random, new in glibc 2.36, which the static libstdc++ of GCC 12 calls for std::random_device: the
 *   wrapper reads the kernel's generator through getrandom(2) (glibc 2.25), as arc4random itself does;
 * - posix_spawn_file_actions_addchdir_np (2.29) and __libc_single_threaded (2.32), below. */
#include <dlfcn.h>
#include <errno.h>
#include <math.h>
#include <spawn.h>
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

/* posix_spawn_file_actions_addchdir_np (glibc 2.29), which Foundation's Process calls to start a child in
 * another folder: called where the running glibc has it, refused (ENOSYS) on an older one. */
typedef int (*ckstore_addchdir_fn)(posix_spawn_file_actions_t *, const char *);
int __wrap_posix_spawn_file_actions_addchdir_np(posix_spawn_file_actions_t *actions, const char *path) {
    ckstore_addchdir_fn real = (ckstore_addchdir_fn)dlsym(RTLD_DEFAULT, "posix_spawn_file_actions_addchdir_np");
    return real ? real(actions, path) : ENOSYS;
}

/* __libc_single_threaded (glibc 2.32), which GCC 12's libstdc++ reads to skip atomic reference counts in a
 * process with one thread: defined here as never single-threaded, so the counts are always atomic. */
char __libc_single_threaded = 0;
