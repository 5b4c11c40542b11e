"""``python -m ffhquv_cli ...``: the same as the ``ffhquv`` console script."""

from ffhquv_cli.main import main

raise SystemExit(main())
