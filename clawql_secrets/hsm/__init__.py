"""The HSM bridge: OpenBao's transit-seal API served from a PKCS#11 token."""
