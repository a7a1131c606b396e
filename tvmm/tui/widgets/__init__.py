"""The viewer's widgets, one per module; each takes its data as attributes and reports
what the user did as messages nested in its class."""
