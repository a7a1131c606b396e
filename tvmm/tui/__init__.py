"""The terminal trace viewer (Textual)."""
