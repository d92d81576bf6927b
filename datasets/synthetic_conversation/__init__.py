"""synthetic_conversation corpus (see README.md)."""
