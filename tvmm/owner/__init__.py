"""The guest owner's side: verifies evidence and releases secrets."""
