"""The ``webhooks`` command line: the composition root above ``webhooks``, ``graphql_api`` and ``workers``."""
