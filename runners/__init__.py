"""Runner presets, jar resolution and the local services' lifecycle."""
