// Store: SQLite event store, audit chain (being written).
