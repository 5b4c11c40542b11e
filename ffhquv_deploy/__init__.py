"""The deploy tool: Kubernetes manifests (a kustomize-subset renderer) and rollouts
(:mod:`ffhquv_deploy.deploy`), run as ``ffhquv deploy ...`` or ``python -m ffhquv_deploy ...``.

Its own package with its own pip extra (``deploy``: kubernetes, kubernetes-validate, pyyaml),
left out of the service images; only the CLI imports it, lazily.
"""

from ffhquv_deploy.deploy import main

__all__ = ["main"]
