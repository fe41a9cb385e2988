#ifndef CKSTORE_CSQLITE_SHIM_H
#define CKSTORE_CSQLITE_SHIM_H
#include <sqlite3.h>

// SQLITE_TRANSIENT is a macro Swift cannot import; this constant lets Swift ask SQLite to copy bound bytes.
static inline sqlite3_destructor_type ckstore_sqlite_transient(void) { return SQLITE_TRANSIENT; }

// sqlite3_db_config is variadic; Swift cannot call it directly.
static inline int ckstore_sqlite_db_config_int(sqlite3 *db, int op, int value) {
    int out = 0;
    return sqlite3_db_config(db, op, value, &out);
}
#endif
