"""Accounts, devices and the public-key directory."""
