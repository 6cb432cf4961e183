"""Runs and operates the OpenBao cluster: HCL, supervision, bootstrap, health."""
