// Linux and glibc calls that Swift's Glibc module does not export (sync_file_range and fallocate need _GNU_SOURCE,
// mallopt lives in <malloc.h>).
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

extern int fallocate(int fd, int mode, long long offset, long long len);

/// Allocates a file's blocks up front (fallocate with mode 0): -1 with errno EOPNOTSUPP where the file
/// system cannot.
static inline int ckstore_allocate(int fd, long long length) {
    return fallocate(fd, 0, 0, length);
}

/// madvise advice from Linux 5.14 that older <sys/mman.h> headers lack: populate the page tables of a
/// range for reading (a file mapping) or for writing (fresh anonymous memory) in one call.
#define CKSTORE_MADV_POPULATE_READ 22
#define CKSTORE_MADV_POPULATE_WRITE 23

extern int mallopt(int param, int value);

/// glibc's M_MMAP_THRESHOLD (-3) and M_TRIM_THRESHOLD (-1) from <malloc.h>, which Glibc does not export.
static inline void ckstore_keep_freed_memory(int mmap_threshold, int trim_threshold) {
    mallopt(-3, mmap_threshold);
    mallopt(-1, trim_threshold);
}
#endif
#endif
