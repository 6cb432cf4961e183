"""ClawQL Secrets: the secrets plane of the ClawQL agent platform."""

__version__ = "0.1.0"
