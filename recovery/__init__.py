"""ohmdb recovery: redo records and their Arrow log format, segment files, group commit, snapshots,
phased recovery, the catalog, the cluster map and the replication rules -- all without Ray."""
