"""``clawql-secrets scan``: prove that no static credential exists (invariant 8).

Pure detection is separate from I/O:

    detect.py      text -> hits: the audit recognizers, entropy rules, base64/DER peeling
    entropy.py     Shannon entropy and look-alike classification of one token
    kube.py        Kubernetes ``Secret`` objects: their base64 ``data`` values, decoded
    bootstrap.py   the named bootstrap trust and the check of its file protection
    kv.py          the allow-list of injected third-party KV secrets, and the KV walk
    model.py       findings, results and the scan limits
    sources.py     the I/O edge: directories, process environments, a live OpenBao
    output.py      for people, JSON, SARIF 2.1.0
    commands.py    the CLI
"""
