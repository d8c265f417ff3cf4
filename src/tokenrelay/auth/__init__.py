"""API keys: creating, storing (hashed), checking; who is calling and what they may use."""
