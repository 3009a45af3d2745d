"""Use cases: validation and orchestration between the API/worker and the repositories."""
