"""The whole secrets plane as Kubernetes objects (``clawql-secrets cluster render-k8s``).

Pure functions from one frozen :class:`~.spec.K8sSpec` to lists of manifest
dicts; only ``cluster/manifests.py`` writes files. ADR 0013 says why this is
Python rather than a Helm chart or a kustomize base, and docs/kubernetes.md
walks through the result.

    spec.py          K8sSpec: namespaces, images (by digest), ports, CIDRs, sizes
    objects.py       shared building blocks: restricted security contexts, volumes, probes
    openbao.py       OpenBao StatefulSet with its audit sidecar, the HSM bridge
    gateway.py       gateway Deployment, Service, HPA, PDB and its configuration
    registry.py      the session registry's Redis (TLS, ACL, no static password)
    keeper.py        the program that hands the Redis admin password to OpenBao once
    pidfile.py       write a pid file, then exec (a renewer restarts the service by it)
    audit.py         Fluent Bit ingest and the witness
    monitoring.py    ServiceMonitors and the PrometheusRule
    network.py       NetworkPolicies: default deny, then each allowed path
    reachability.py  what NetworkPolicies allow, evaluated from their selectors
"""
