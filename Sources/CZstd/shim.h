#ifndef CKSTORE_CZSTD_SHIM_H
#define CKSTORE_CZSTD_SHIM_H
#include <zstd.h>
#include <zstd_errors.h>
#endif
