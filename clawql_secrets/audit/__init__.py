"""Ships, proves and queries the OpenBao audit trail."""
