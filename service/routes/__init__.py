"""HTTP routes: health (no auth), models and sessions (versioned under /v1)."""
