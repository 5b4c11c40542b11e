"""``python -m ffhquv_deploy ...``: the same as ``ffhquv deploy ...``."""

from ffhquv_deploy.deploy import main

raise SystemExit(main())
