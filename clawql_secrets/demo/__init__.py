"""The end-to-end demo of the local stack (also run as a test)."""
