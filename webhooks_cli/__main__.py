"""``python -m webhooks_cli``: the same as the ``webhooks`` console script."""

from webhooks_cli.main import main

raise SystemExit(main())
