// Linux calls that glibc declares only under _GNU_SOURCE, which Swift's Glibc module does not define.
// Declared here by hand rather than by including <fcntl.h> with _GNU_SOURCE, which would make this module
// claim libc's types (struct stat) and hide them from Swift code that imports Glibc.
#ifndef CKSTORE_CLINUX_SHIM_H
#define CKSTORE_CLINUX_SHIM_H
#ifdef __linux__
extern int sync_file_range(int fd, long long offset, long long nbytes, unsigned int flags);

/// Starts writeback of a file range without waiting: sync_file_range with SYNC_FILE_RANGE_WRITE (2).
static inline int ckstore_start_writeback(int fd, long long offset, long long count) {
    return sync_file_range(fd, offset, count, 2);
}
#endif
#endif
