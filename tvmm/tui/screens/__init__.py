"""The viewer's screens, one per module: loading, timeline, overview, help, error."""
