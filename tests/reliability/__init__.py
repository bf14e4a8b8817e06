"""Reliability and security under attack: faults, abuse and a short soak on live servers (issue 7)."""
