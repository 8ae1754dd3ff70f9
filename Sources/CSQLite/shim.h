/* SQLite's C API as a Swift module: the store needs nothing more than it. */
#include <sqlite3.h>
