"""MongoDB repositories: every query is scoped by account and served by an index (see ``webhooks.db``)."""
