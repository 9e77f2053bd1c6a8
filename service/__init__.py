"""ebmm.service: the REST memory service (FastAPI)."""
