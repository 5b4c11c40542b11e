"""The ``ffhquv`` command line: the wiring above the services and the gateway.

:mod:`ffhquv_cli.main` builds the parser and dispatches (the ``ffhquv`` console script,
``python -m ffhquv_cli``); :mod:`ffhquv_cli.commands` implements the subcommands, importing the
services, the gateway and (for ``ffhquv deploy``) :mod:`ffhquv_deploy` lazily. Nothing in the
base package ``ffhquv`` or in a service imports this package (tests/test_imports.py).
"""

import os

# numpy's OpenBLAS starts a thread per core and keeps them spinning after each product; the
# products numpy computes in the services are small (a colour conversion of one texture), so
# every one of them charged idle cores' spinning to the photo: on a 16-core GPU host the
# fitter's host work cost up to 4x its single-thread CPU time, and `serve all`'s processes
# took those cores from each other. Set before numpy loads (torch's own threads are set
# apart: OMP_NUM_THREADS / torch.set_num_threads); a user's value wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

# a photo's texture arrays are reused from the heap instead of being mapped afresh each time
# (ffhquv.allocator); a user's MALLOC_* variables win
from ffhquv.allocator import keep_large_freed  # noqa: E402

keep_large_freed()
