"""Conversations, envelopes, receipts and the real-time relay."""
