"""Short-lived certificates for internal services, from OpenBao PKI (replaces cert-manager).

``certs run`` keeps a certificate per declared service fresh: key generated on
this host, CSR signed by ``pki_int/sign/<role>`` as the renewer's workload
identity, verified, written atomically (0600), renewed at 2/3 of its life with
jitter, the service told to reload. ``certs check`` reports from the files.
"""
