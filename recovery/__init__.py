"""ohmdb recovery: redo records, the cluster map, and (to come) logs, snapshots and replay."""
