"""The ``ffhquv`` command line: the wiring above the services and the gateway.

:mod:`ffhquv_cli.main` builds the parser and dispatches (the ``ffhquv`` console script,
``python -m ffhquv_cli``); :mod:`ffhquv_cli.commands` implements the subcommands, importing the
services, the gateway and (for ``ffhquv deploy``) :mod:`ffhquv_deploy` lazily. Nothing in the
base package ``ffhquv`` or in a service imports this package (tests/test_imports.py).
"""
