"""A C2SP tlog-witness for the audit log (and any C2SP checkpoint log).

The log operator holds the checkpoint key, so the log alone cannot prove it
never forked or rolled back its history. A witness run by someone else
remembers, per log origin, the largest tree it cosigned, and cosigns a new
checkpoint only with a consistency proof from that tree. ``state`` is the pure
decision procedure, ``store`` persists what was cosigned, ``server`` serves
``POST /add-checkpoint`` (c2sp.org/tlog-witness), ``client`` is what a log uses
to ask, and ``config``/``commands`` run it as ``clawql-secrets audit witness``.
"""
